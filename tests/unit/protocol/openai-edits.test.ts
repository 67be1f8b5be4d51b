import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import { buildHttpServer } from '../../../src/protocol/http/index.js';
import { FakeCore } from './fake-core.js';

async function setup(t: TestContext) {
  const app = buildHttpServer(new FakeCore());
  t.after(() => app.close());
  await app.ready();
  return app;
}

const form = (...parts: Array<[string, string]>) => parts
  .map(([name, value]) => `--XX\r\nContent-Disposition: form-data; name="${name}"\r\n\r\n${value}\r\n`).join('') + '--XX--\r\n';

describe('POST /v1/images/edits', () => {
  it('answers a malformed or incomplete form with OpenAI\'s 400 naming the problem, before any inference', async (t) => {
    const app = await setup(t);
    const cases: Array<[string, string, RegExp]> = [
      ['multipart/form-data', 'garbage', /malformed multipart\/form-data body: .*Boundary not found/],
      ['multipart/form-data; boundary=XX', form(['prompt', 'a cat']), /"image" \(a PNG, JPEG or WebP file\) is required/],
      ['multipart/form-data; boundary=XX', form(['quality', 'high']), /unsupported field "quality"/],
      ['multipart/form-data; boundary=XX', form(['n', 'two']), /"n" must be a number, got "two"/],
      ['application/json', '{"prompt": "a cat"}', /the body must be multipart\/form-data/],
    ];
    for (const [type, payload, message] of cases) {
      const res = await app.inject({ method: 'POST', url: '/v1/images/edits', headers: { 'content-type': type }, payload });
      assert.equal(res.statusCode, 400, payload);
      assert.equal(res.json().error.type, 'invalid_request_error');
      assert.match(res.json().error.message, message);
    }
  });

  it('still refuses multipart bodies on the JSON routes', async (t) => {
    const app = await setup(t);
    const res = await app.inject({
      method: 'POST', url: '/v1/images/generations', headers: { 'content-type': 'multipart/form-data; boundary=XX' },
      payload: form(['prompt', 'a cat']),
    });
    assert.equal(res.statusCode, 415);
  });
});
