import assert from 'node:assert/strict';
import { once } from 'node:events';
import { request as httpsRequest } from 'node:https';
import { connect, type Socket } from 'node:net';
import { describe, it, type TestContext } from 'node:test';
import type { AddressInfo } from 'node:net';
import { buildHttpServer, type HttpServerOptions } from '../../../src/protocol/http/index.js';
import { makeSelfSignedCertificate } from '../../fixtures/self-signed-cert.js';
import { FakeCore } from './fake-core.js';

async function listen(t: TestContext, options: HttpServerOptions) {
  const app = buildHttpServer(new FakeCore(), options);
  await app.listen({ host: '127.0.0.1', port: 0 });
  t.after(() => app.close());
  return { app, port: (app.server.address() as AddressInfo).port };
}

/** Opens a TCP connection that sends nothing; resolves once connected. */
async function idleConnection(port: number): Promise<Socket> {
  const socket = connect(port, '127.0.0.1');
  socket.on('error', () => undefined);
  await once(socket, 'connect');
  return socket;
}

const closed = (socket: Socket) => (socket.destroyed || socket.readyState === 'closed'
  ? Promise.resolve() : once(socket, 'close').then(() => undefined));

/** Rejects if `promise` takes longer than `ms` (a bound on a wait, not a timing assertion). */
function within<T>(ms: number, promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`${what} within ${ms} ms`)), ms); });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

describe('HTTP connection limits', () => {
  // Issue 13 #6: 22,000 idle connections exhausted the file descriptors; nothing was answered.
  it('refuses connections over the cap, closes idle ones after the header timeout, then answers a fresh client', async (t) => {
    const { port } = await listen(t, { limits: { maxConnections: 8, headersTimeoutMs: 1000 } });
    const sockets = await Promise.all(Array.from({ length: 12 }, () => idleConnection(port)));
    t.after(() => sockets.forEach((socket) => socket.destroy()));
    await within(10_000, Promise.all(sockets.map(closed)), 'every idle connection closed by the server');
    const res = await fetch(`http://127.0.0.1:${port}/v2/health/live`);
    assert.equal(res.status, 200);
  });

  it('caps request bodies at --http-max-input-size with 413', async (t) => {
    const { port } = await listen(t, { limits: { maxInputBytes: 1024 } });
    const res = await fetch(`http://127.0.0.1:${port}/v2/repository/index`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ pad: 'x'.repeat(2048) }),
    });
    assert.equal(res.status, 413);
  });
});

describe('HTTP request shape', () => {
  // Issue 13 #6: a million keys in `parameters` held the event loop for seconds.
  it('answers 400 to a request with a million parameters, naming the limit', async (t) => {
    const { port } = await listen(t, {});
    const keys = Array.from({ length: 1_000_000 }, (_, i) => `"k${i}":1`).join(',');
    const body = `{"inputs":[{"name":"A","datatype":"INT32","shape":[1],"data":[1]}],"parameters":{${keys}}}`;
    const res = await fetch(`http://127.0.0.1:${port}/v2/models/echo/infer`, { method: 'POST', body: Buffer.from(body) });
    assert.equal(res.status, 400);
    assert.match((await res.json()).error, /has more than 128 members; at most 128 are accepted/);
  });

  it('answers 400 to JSON nested too deep, on every JSON route', async (t) => {
    const { port } = await listen(t, {});
    const deep = `{"parameters":{"a":${'['.repeat(10_000)}${']'.repeat(10_000)}}}`;
    for (const url of ['/v2/models/echo/infer', '/v2/repository/index']) {
      const res = await fetch(`http://127.0.0.1:${port}${url}`, { method: 'POST', body: Buffer.from(deep) });
      assert.equal(res.status, 400, url);
      assert.match((await res.json()).error, /nested deeper than 32 levels/);
    }
  });

  it('still takes 128 parameters and brackets or colons inside strings', async (t) => {
    const { port } = await listen(t, {});
    const parameters = Object.fromEntries(Array.from({ length: 128 }, (_, i) => [`k${i}`, i === 0 ? '{[:"\\' : i]));
    const body = JSON.stringify({ inputs: [{ name: 'A', datatype: 'INT32', shape: [1], data: [1] }], parameters });
    const res = await fetch(`http://127.0.0.1:${port}/v2/models/echo/infer`, { method: 'POST', body: Buffer.from(body) });
    assert.equal(res.status, 200, await res.text());
  });
});

describe('HTTPS', () => {
  it('serves the API over TLS with the given certificate', async (t) => {
    const certificate = makeSelfSignedCertificate();
    t.after(() => certificate.remove());
    const { port } = await listen(t, { tls: { cert: certificate.cert, key: certificate.key } });
    const { status, body } = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      httpsRequest({ host: '127.0.0.1', port, path: '/v2', ca: certificate.cert }, (res) => {
        let text = '';
        res.setEncoding('utf8').on('data', (chunk: string) => { text += chunk; }).on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
      }).on('error', reject).end();
    });
    assert.equal(status, 200);
    assert.equal(JSON.parse(body).name, 'sdserve');
    // A plaintext client gets no HTTP answer from the TLS port.
    await assert.rejects(fetch(`http://127.0.0.1:${port}/v2`));
  });
});
