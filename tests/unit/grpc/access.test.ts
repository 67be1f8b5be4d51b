import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { credentials, Metadata, status, type ChannelCredentials, type Client, type ServiceError } from '@grpc/grpc-js';
import { parseRestrictedApis, type AccessPolicy } from '../../../src/protocol/access-policy.js';
import { loadInferenceService, startGrpcServer, type GrpcServerOptions } from '../../../src/protocol/grpc/index.js';
import { FakeGrpcCore } from '../../fixtures/grpc-fake-core.js';
import { makeSelfSignedCertificate } from '../../fixtures/self-signed-cert.js';

type AnyClient = Client & Record<string, (...args: unknown[]) => unknown>;
const KEY = 'sk-grpc-test';

async function setup(t: TestContext, options: Partial<GrpcServerOptions> = {}, clientOptions: object = {},
  channel: ChannelCredentials = credentials.createInsecure()) {
  const server = await startGrpcServer(new FakeGrpcCore(), { host: '127.0.0.1', port: 0, ...options });
  const Service = await loadInferenceService();
  const client = new Service(`127.0.0.1:${server.port}`, channel, clientOptions) as unknown as AnyClient;
  t.after(async () => { client.close(); await server.close(); });
  const call = (rpc: string, request: object, headers: Record<string, string> = {}) => new Promise<any>((resolve, reject) => {
    const metadata = new Metadata();
    for (const [key, value] of Object.entries(headers)) metadata.set(key, value);
    client[rpc](request, metadata, (err: ServiceError | null, response: unknown) => (err ? reject(err) : resolve(response)));
  });
  return { call, port: server.port };
}

const grpcError = (code: status, pattern: RegExp) => (err: unknown) => {
  const e = err as ServiceError;
  assert.equal(e.code, code, `code ${status[e.code]}: ${e.details}`);
  assert.match(e.details, pattern);
  return true;
};

describe('gRPC API key', () => {
  const access: AccessPolicy = { apiKey: KEY, restrictions: new Map() };

  it('answers UNAUTHENTICATED without the key or with a wrong one, on every RPC', async (t) => {
    const { call } = await setup(t, { access });
    for (const rpc of ['ServerLive', 'ServerMetadata', 'RepositoryIndex', 'ModelInfer']) {
      await assert.rejects(call(rpc, {}), grpcError(status.UNAUTHENTICATED, /requires an API key/), rpc);
    }
    await assert.rejects(call('ServerLive', {}, { authorization: 'Bearer wrong' }), grpcError(status.UNAUTHENTICATED, /not valid/));
  });

  it('serves a call carrying `authorization: Bearer <key>`', async (t) => {
    const { call } = await setup(t, { access });
    assert.deepEqual(await call('ServerLive', {}, { authorization: `Bearer ${KEY}` }), { live: true });
  });
});

describe('gRPC restricted protocols (Triton --grpc-restricted-protocol)', () => {
  const restrictions = parseRestrictedApis(['model-repository:admin-key=admin-value'], '--grpc-restricted-protocol');

  it('needs triton-grpc-protocol-<header> on a restricted group, and only there', async (t) => {
    const { call } = await setup(t, { access: { restrictions } });
    await assert.rejects(call('RepositoryIndex', {}), grpcError(status.PERMISSION_DENIED, /This protocol is restricted, expecting header 'triton-grpc-protocol-admin-key'/));
    await assert.rejects(call('RepositoryIndex', {}, { 'admin-key': 'admin-value' }), grpcError(status.PERMISSION_DENIED, /restricted/));
    assert.ok(await call('RepositoryIndex', {}, { 'triton-grpc-protocol-admin-key': 'admin-value' }));
    assert.deepEqual(await call('ServerReady', {}), { ready: true });
  });
});

describe('gRPC message size', () => {
  // Issue 13 #6: gRPC accepted 1 GB messages.
  it('refuses a request over the limit with RESOURCE_EXHAUSTED and keeps serving', async (t) => {
    const { call } = await setup(t, { maxMessageBytes: 1024 * 1024 }, { 'grpc.max_send_message_length': -1 });
    const big = Buffer.alloc(2 * 1024 * 1024);
    await assert.rejects(call('ModelInfer', {
      model_name: 'echo', inputs: [{ name: 'a', datatype: 'UINT8', shape: [big.length] }], raw_input_contents: [big],
    }), grpcError(status.RESOURCE_EXHAUSTED, /larger than max/));
    assert.deepEqual(await call('ServerLive', {}), { live: true });
  });

  it('caps requests at 64 MiB by default', async (t) => {
    const { call } = await setup(t, {}, { 'grpc.max_send_message_length': -1 });
    const big = Buffer.alloc(65 * 1024 * 1024);
    await assert.rejects(call('ModelInfer', {
      model_name: 'echo', inputs: [{ name: 'a', datatype: 'UINT8', shape: [big.length] }], raw_input_contents: [big],
    }), grpcError(status.RESOURCE_EXHAUSTED, /larger than max/));
  });
});

describe('gRPC over TLS', () => {
  it('serves calls over TLS with the given certificate (Triton\'s --grpc-use-ssl)', async (t) => {
    const certificate = makeSelfSignedCertificate();
    t.after(() => certificate.remove());
    const { call } = await setup(t, { tls: { certFile: certificate.certFile, keyFile: certificate.keyFile } }, {},
      credentials.createSsl(certificate.cert));
    assert.deepEqual(await call('ServerLive', {}), { live: true });
  });

  it('refuses a plaintext client on the TLS port', async (t) => {
    const certificate = makeSelfSignedCertificate();
    t.after(() => certificate.remove());
    const { call } = await setup(t, { tls: { certFile: certificate.certFile, keyFile: certificate.keyFile } });
    await assert.rejects(call('ServerLive', {}), (err: ServiceError) => err.code === status.UNAVAILABLE);
  });
});

describe('gRPC connections', () => {
  const idle = async (port: number): Promise<Socket> => {
    const socket = connect(port, '127.0.0.1');
    socket.on('error', () => undefined);
    await once(socket, 'connect');
    return socket;
  };

  // Issue 13 #6: idle connections held file descriptors without bound.
  it('closes connections over the cap and silent ones, then serves a fresh client', async (t) => {
    const { call, port } = await setup(t, { maxConnections: 4, silentTimeoutMs: 500 });
    const sockets = await Promise.all(Array.from({ length: 6 }, () => idle(port)));
    t.after(() => sockets.forEach((socket) => socket.destroy()));
    let timer: NodeJS.Timeout | undefined;
    const bound = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error('silent connections still open')), 10_000); });
    await Promise.race([Promise.all(sockets.map((socket) => (socket.destroyed ? undefined : once(socket, 'close')))), bound])
      .finally(() => clearTimeout(timer));
    assert.deepEqual(await call('ServerLive', {}), { live: true });
  });
});
