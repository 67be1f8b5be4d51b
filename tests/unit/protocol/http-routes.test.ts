import assert from 'node:assert/strict';
import { gzipSync } from 'node:zlib';
import { describe, it, type TestContext } from 'node:test';
import { buildHttpServer } from '../../../src/protocol/http/index.js';
import { FakeCore } from './fake-core.js';

function setup(t: TestContext, options: { bodyLimitBytes?: number } = {}) {
  const core = new FakeCore();
  const app = buildHttpServer(core, options);
  t.after(() => app.close());
  return { core, app };
}

describe('HTTP health and metadata routes', () => {
  it('answers live and ready with 200 and an empty body', async (t) => {
    const { app } = setup(t);
    for (const url of ['/v2/health/live', '/v2/health/ready']) {
      const res = await app.inject({ method: 'GET', url });
      assert.equal(res.statusCode, 200, url);
      assert.equal(res.body, '');
    }
  });

  it('answers 400 with an empty body when not live or not ready', async (t) => {
    const { app, core } = setup(t);
    core.live = false;
    core.ready = false;
    for (const url of ['/v2/health/live', '/v2/health/ready']) {
      const res = await app.inject({ method: 'GET', url });
      assert.equal(res.statusCode, 400, url);
      assert.equal(res.body, '');
    }
  });

  it('serves server metadata at /v2', async (t) => {
    const { app } = setup(t);
    const res = await app.inject({ method: 'GET', url: '/v2' });
    assert.equal(res.statusCode, 200);
    assert.match(String(res.headers['content-type']), /^application\/json/);
    assert.deepEqual(res.json(), { name: 'sdserve', version: '0.1.0', extensions: ['binary_tensor_data', 'model_repository'] });
  });

  it('serves model metadata with and without a version', async (t) => {
    const { app } = setup(t);
    for (const url of ['/v2/models/echo', '/v2/models/echo/versions/1']) {
      const res = await app.inject({ method: 'GET', url });
      assert.equal(res.statusCode, 200, url);
      assert.equal(res.json().name, 'echo');
      assert.deepEqual(res.json().outputs, [{ name: 'SUM', datatype: 'INT32', shape: [-1] }]);
    }
  });

  it('maps core errors to the catalog status with an {"error"} body', async (t) => {
    const { app } = setup(t);
    const res = await app.inject({ method: 'GET', url: '/v2/models/nope' });
    assert.equal(res.statusCode, 400);
    assert.deepEqual(res.json(), { error: "unknown model 'nope'" });
    const ver = await app.inject({ method: 'GET', url: '/v2/models/echo/versions/9' });
    assert.deepEqual(ver.json(), { error: "model 'echo' has no version 9" });
  });

  it('answers model readiness 200 or 400 with empty bodies', async (t) => {
    const { app } = setup(t);
    const cases: Array<[string, number]> = [
      ['/v2/models/echo/ready', 200], ['/v2/models/echo/versions/1/ready', 200],
      ['/v2/models/echo/versions/2/ready', 400], ['/v2/models/nope/ready', 400],
    ];
    for (const [url, status] of cases) {
      const res = await app.inject({ method: 'GET', url });
      assert.equal(res.statusCode, status, url);
      assert.equal(res.body, '');
    }
  });

  it('serves the model config as it is', async (t) => {
    const { app } = setup(t);
    const res = await app.inject({ method: 'GET', url: '/v2/models/sum/versions/1/config' });
    assert.equal(res.statusCode, 200);
    assert.equal(res.json().name, 'sum');
    assert.deepEqual(res.json().version_policy, { latest: { num_versions: 1 } });
  });

  it('answers unknown routes with 404 {"error"}', async (t) => {
    const { app } = setup(t);
    const res = await app.inject({ method: 'GET', url: '/v2/nothing/here' });
    assert.equal(res.statusCode, 404);
    assert.deepEqual(res.json(), { error: 'no route for GET /v2/nothing/here' });
    const wrongMethod = await app.inject({ method: 'GET', url: '/v2/models/echo/infer' });
    assert.equal(wrongMethod.statusCode, 404);
    assert.ok(typeof wrongMethod.json().error === 'string');
  });
});

describe('HTTP repository routes', () => {
  it('lists the index with no body, an empty JSON body, and ready=true', async (t) => {
    const { app } = setup(t);
    const noBody = await app.inject({ method: 'POST', url: '/v2/repository/index' });
    assert.equal(noBody.statusCode, 200);
    assert.equal(noBody.json().length, 2);
    const empty = await app.inject({
      method: 'POST', url: '/v2/repository/index', headers: { 'content-type': 'application/json' }, payload: '',
    });
    assert.equal(empty.json().length, 2);
    const ready = await app.inject({ method: 'POST', url: '/v2/repository/index', payload: { ready: true } });
    assert.deepEqual(ready.json(), [{ name: 'echo', version: '1', state: 'READY', reason: '' }]);
  });

  it('rejects a body of the wrong type with a 400 naming the field', async (t) => {
    const { app } = setup(t);
    const res = await app.inject({ method: 'POST', url: '/v2/repository/index', payload: { ready: 'yes' } });
    assert.equal(res.statusCode, 400);
    assert.deepEqual(res.json(), { error: 'invalid request body: /ready must be boolean' });
  });

  it('rejects malformed JSON with a 400 naming the problem', async (t) => {
    const { app } = setup(t);
    const res = await app.inject({
      method: 'POST', url: '/v2/repository/index', headers: { 'content-type': 'application/json' }, payload: '{"ready":',
    });
    assert.equal(res.statusCode, 400);
    assert.match(res.json().error, /^malformed JSON in request body: /);
  });

  it('rejects a body of non-JSON whitespace (a form feed) as malformed JSON, not as an empty body', async (t) => {
    const { app } = setup(t);
    for (const payload of ['\f', ' \v ', '\u00a0']) {
      const res = await app.inject({
        method: 'POST', url: '/v2/repository/index', headers: { 'content-type': 'application/json' }, payload,
      });
      assert.equal(res.statusCode, 400, JSON.stringify(payload));
      assert.match(res.json().error, /^malformed JSON in request body: /);
    }
    const whitespace = await app.inject({
      method: 'POST', url: '/v2/repository/index', headers: { 'content-type': 'application/json' }, payload: ' \r\n\t',
    });
    assert.equal(whitespace.statusCode, 200);
  });

  it('loads a model, passing a config override through', async (t) => {
    const { app, core } = setup(t);
    const plain = await app.inject({ method: 'POST', url: '/v2/repository/models/echo/load' });
    assert.equal(plain.statusCode, 200);
    assert.equal(plain.body, '');
    const config = JSON.stringify({ max_batch_size: 4 });
    const res = await app.inject({
      method: 'POST', url: '/v2/repository/models/echo/load', payload: { parameters: { config } },
    });
    assert.equal(res.statusCode, 200);
    assert.deepEqual(core.loads, [{ name: 'echo' }, { name: 'echo', config }]);
  });

  it('accepts a gzip-encoded body', async (t) => {
    const { app, core } = setup(t);
    const res = await app.inject({
      method: 'POST', url: '/v2/repository/models/sum/load',
      headers: { 'content-encoding': 'gzip' }, payload: gzipSync(JSON.stringify({ parameters: { config: '{}' } })),
    });
    assert.equal(res.statusCode, 200);
    assert.deepEqual(core.loads, [{ name: 'sum', config: '{}' }]);
  });

  it('rejects file overrides and a non-string config; maps load failures', async (t) => {
    const { app } = setup(t);
    const file = await app.inject({
      method: 'POST', url: '/v2/repository/models/echo/load', payload: { parameters: { 'file:1/model.py': 'AAAA' } },
    });
    assert.equal(file.statusCode, 400);
    assert.match(file.json().error, /'file:1\/model.py': model file overrides are not supported/);
    const config = await app.inject({
      method: 'POST', url: '/v2/repository/models/echo/load', payload: { parameters: { config: { a: 1 } } },
    });
    assert.equal(config.statusCode, 400);
    assert.match(config.json().error, /\/parameters\/config must be string/);
    const broken = await app.inject({ method: 'POST', url: '/v2/repository/models/broken/load' });
    assert.equal(broken.statusCode, 400);
    assert.deepEqual(broken.json(), { error: "model 'broken': bad config" });
  });

  it('unloads a model', async (t) => {
    const { app, core } = setup(t);
    const res = await app.inject({
      method: 'POST', url: '/v2/repository/models/echo/unload', payload: { parameters: { unload_dependents: false } },
    });
    assert.equal(res.statusCode, 200);
    assert.deepEqual(core.unloads, ['echo']);
    const missing = await app.inject({ method: 'POST', url: '/v2/repository/models/nope/unload' });
    assert.equal(missing.statusCode, 400);
    assert.deepEqual(missing.json(), { error: "unknown model 'nope'" });
  });

  it('answers 413 {"error"} for a body over the limit', async (t) => {
    const { app } = setup(t, { bodyLimitBytes: 64 });
    const res = await app.inject({
      method: 'POST', url: '/v2/repository/index', payload: { ready: true, pad: 'x'.repeat(100) },
    });
    assert.equal(res.statusCode, 413);
    assert.ok(typeof res.json().error === 'string');
  });
});
