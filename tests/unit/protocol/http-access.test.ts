import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import { parseRestrictedApis, type AccessPolicy } from '../../../src/protocol/access-policy.js';
import { buildHttpServer } from '../../../src/protocol/http/index.js';
import { FakeCore } from './fake-core.js';

const KEY = 'sk-test-0123456789';

function setup(t: TestContext, access: Partial<AccessPolicy> = {}, corsOrigins: string[] = []) {
  const core = new FakeCore();
  const app = buildHttpServer(core, { access: { restrictions: new Map(), ...access }, corsOrigins });
  t.after(() => app.close());
  return { core, app };
}

const bearer = (key: string) => ({ authorization: `Bearer ${key}` });

describe('HTTP API key', () => {
  it('refuses every route without the key with 401, a Bearer challenge and a Triton error body', async (t) => {
    const { app } = setup(t, { apiKey: KEY });
    for (const [method, url] of [['GET', '/v2/health/ready'], ['GET', '/v2'], ['GET', '/v2/models/echo/config'],
      ['POST', '/v2/repository/index'], ['POST', '/v2/models/echo/infer'], ['GET', '/v2/no/such/route']] as const) {
      const res = await app.inject({ method, url });
      assert.equal(res.statusCode, 401, `${method} ${url}`);
      assert.equal(res.headers['www-authenticate'], 'Bearer');
      assert.match(res.json().error, /requires an API key/);
    }
  });

  it('accepts the right key and refuses a wrong one', async (t) => {
    const { app } = setup(t, { apiKey: KEY });
    assert.equal((await app.inject({ method: 'GET', url: '/v2/health/ready', headers: bearer(KEY) })).statusCode, 200);
    const wrong = await app.inject({ method: 'GET', url: '/v2/health/ready', headers: bearer(`${KEY}x`) });
    assert.equal(wrong.statusCode, 401);
    assert.deepEqual(wrong.json(), { error: 'the API key is not valid' });
    const basic = await app.inject({ method: 'GET', url: '/v2', headers: { authorization: `Basic ${KEY}` } });
    assert.equal(basic.statusCode, 401);
  });

  it('answers /v1 in OpenAI\'s error shape', async (t) => {
    const { app } = setup(t, { apiKey: KEY });
    const res = await app.inject({ method: 'GET', url: '/v1/models' });
    assert.equal(res.statusCode, 401);
    assert.equal(res.json().error.type, 'invalid_request_error');
    assert.match(res.json().error.message, /API key/);
    assert.equal((await app.inject({ method: 'GET', url: '/v1/models', headers: bearer(KEY) })).statusCode, 200);
  });

  it('serves the playground page itself without the key', async (t) => {
    const { app } = setup(t, { apiKey: KEY });
    assert.equal((await app.inject({ method: 'GET', url: '/playground' })).statusCode, 200);
  });
});

describe('HTTP restricted APIs (Triton --http-restricted-api)', () => {
  const restrictions = parseRestrictedApis(['model-repository,model-config:admin-key=admin-value', 'inference:infer-key=iv'], '--http-restricted-api');

  it('refuses a restricted group without its header with 403 and Triton\'s message', async (t) => {
    const { app } = setup(t, { restrictions });
    const load = await app.inject({ method: 'POST', url: '/v2/repository/models/echo/load' });
    assert.equal(load.statusCode, 403);
    assert.deepEqual(load.json(), { error: "This API is restricted, expecting header 'admin-key'" });
    const wrong = await app.inject({ method: 'GET', url: '/v2/models/echo/config', headers: { 'admin-key': 'nope' } });
    assert.equal(wrong.statusCode, 403);
    const infer = await app.inject({ method: 'POST', url: '/v2/models/echo/infer', headers: { 'admin-key': 'admin-value' }, payload: {} });
    assert.equal(infer.statusCode, 403);
    assert.match(infer.json().error, /'infer-key'/);
  });

  it('lets the header through and leaves other groups open', async (t) => {
    const { app } = setup(t, { restrictions });
    const ok = await app.inject({ method: 'POST', url: '/v2/repository/index', headers: { 'admin-key': 'admin-value' } });
    assert.equal(ok.statusCode, 200);
    for (const url of ['/v2/health/ready', '/v2/models/echo', '/v2/models/echo/ready', '/v2/models/stats']) {
      assert.equal((await app.inject({ method: 'GET', url })).statusCode, 200, url);
    }
  });

  it('treats routes it does not know as inference (fail closed)', async (t) => {
    const { app } = setup(t, { restrictions });
    const res = await app.inject({ method: 'GET', url: '/v2/not/a/route' });
    assert.equal(res.statusCode, 403);
    assert.equal((await app.inject({ method: 'GET', url: '/v2/not/a/route', headers: { 'infer-key': 'iv' } })).statusCode, 404);
  });

  it('rejects malformed flag values and an API in two groups', () => {
    assert.throws(() => parseRestrictedApis(['model-repository'], '--http-restricted-api'), /API\[,API\]:HEADER=VALUE/);
    assert.throws(() => parseRestrictedApis(['bogus:k=v'], '--http-restricted-api'), /unknown API 'bogus'/);
    assert.throws(() => parseRestrictedApis(['health:k=v', 'health:j=w'], '--http-restricted-api'), /restricted twice/);
  });
});

describe('HTTP request bodies and origins', () => {
  // Issue 13 #1: a web page could POST a repository load with Content-Type text/plain.
  it('answers 415 to text/plain and form bodies on JSON routes', async (t) => {
    const { app, core } = setup(t);
    for (const type of ['text/plain', 'text/plain;charset=UTF-8', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x']) {
      const res = await app.inject({ method: 'POST', url: '/v2/repository/models/echo/load', headers: { 'content-type': type }, payload: '{}' });
      assert.equal(res.statusCode, 415, type);
      assert.match(res.json().error, /not accepted here: send application\/json$/);
    }
    assert.equal(core.loads.length, 0);
  });

  it('keeps JSON, no Content-Type (tritonclient) and binary infer bodies working', async (t) => {
    const { app } = setup(t);
    assert.equal((await app.inject({ method: 'POST', url: '/v2/repository/index', headers: { 'content-type': 'application/json' }, payload: '{}' })).statusCode, 200);
    assert.equal((await app.inject({ method: 'POST', url: '/v2/repository/index', payload: Buffer.from('{}') })).statusCode, 200);
    const infer = await app.inject({
      method: 'POST', url: '/v2/models/echo/infer', headers: { 'content-type': 'application/octet-stream' },
      payload: JSON.stringify({ inputs: [{ name: 'A', datatype: 'INT32', shape: [1], data: [1] }] }),
    });
    assert.equal(infer.statusCode, 200, infer.body);
    const plainInfer = await app.inject({ method: 'POST', url: '/v2/models/echo/infer', headers: { 'content-type': 'text/plain' }, payload: '{}' });
    assert.equal(plainInfer.statusCode, 415);
    assert.match(plainInfer.json().error, /send application\/json or application\/octet-stream$/);
    const octetLoad = await app.inject({ method: 'POST', url: '/v2/repository/index', headers: { 'content-type': 'application/octet-stream' }, payload: '{}' });
    assert.equal(octetLoad.statusCode, 415);
  });

  it('refuses a cross-origin POST whatever its Content-Type, and allows same-origin and configured origins', async (t) => {
    const { app, core } = setup(t, {}, ['https://studio.example']);
    const foreign = await app.inject({ method: 'POST', url: '/v2/repository/models/echo/load', headers: { origin: 'https://evil.example' }, payload: Buffer.from('{}') });
    assert.equal(foreign.statusCode, 403);
    assert.match(foreign.json().error, /cross-origin POST from 'https:\/\/evil.example' refused/);
    assert.equal(core.loads.length, 0);
    const same = await app.inject({ method: 'POST', url: '/v2/repository/index', headers: { origin: 'http://localhost:80', host: 'localhost:80' } });
    assert.equal(same.statusCode, 200);
    const allowed = await app.inject({ method: 'POST', url: '/v2/repository/index', headers: { origin: 'https://studio.example' } });
    assert.equal(allowed.statusCode, 200);
    assert.equal(allowed.headers['access-control-allow-origin'], 'https://studio.example');
  });

  it('sends no CORS headers unless origins are configured, and answers configured preflights', async (t) => {
    const { app } = setup(t);
    const res = await app.inject({ method: 'GET', url: '/v2', headers: { origin: 'https://studio.example' } });
    assert.equal(res.headers['access-control-allow-origin'], undefined);
    const { app: withCors } = setup(t, { apiKey: KEY }, ['https://studio.example']);
    const preflight = await withCors.inject({
      method: 'OPTIONS', url: '/v1/images/generations',
      headers: { origin: 'https://studio.example', 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization,content-type' },
    });
    assert.equal(preflight.statusCode, 204);
    assert.equal(preflight.headers['access-control-allow-origin'], 'https://studio.example');
    assert.match(String(preflight.headers['access-control-allow-headers']), /authorization/);
  });
});
