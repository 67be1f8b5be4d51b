import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import { buildHttpServer, OPENAPI_DOCUMENT, OPENAPI_PATH, registeredRoutes } from '../../../src/protocol/http/index.js';
import { FakeCore } from './fake-core.js';

const OPERATIONS = ['get', 'post', 'put', 'patch', 'delete', 'options', 'head'];

/** `/v2/models/:model` as OpenAPI writes it: `/v2/models/{model}`. */
const asOpenApiPath = (url: string) => url.replace(/:([A-Za-z_]\w*)/g, '{$1}');

function documentedOperations(): Set<string> {
  const operations = new Set<string>();
  for (const [path, item] of Object.entries(OPENAPI_DOCUMENT.paths)) {
    for (const method of Object.keys(item).filter((key) => OPERATIONS.includes(key))) {
      operations.add(`${method.toUpperCase()} ${path}`);
    }
  }
  return operations;
}

async function readyServer(t: TestContext) {
  const app = buildHttpServer(new FakeCore());
  t.after(() => app.close());
  await app.ready();
  return app;
}

describe('OpenAPI document', () => {
  it('describes every registered route (fastify adds HEAD to each GET itself)', async (t) => {
    const app = await readyServer(t);
    const documented = documentedOperations();
    const served = registeredRoutes(app).filter((route) => route.method !== 'HEAD')
      .map((route) => `${route.method} ${asOpenApiPath(route.url)}`);
    assert.ok(served.length >= 25, `only ${served.length} routes were recorded`);
    assert.deepEqual(served.filter((op) => !documented.has(op)), [], 'routes missing from the document');
    assert.deepEqual([...documented].filter((op) => !served.includes(op)).sort(), [], 'documented routes the server lacks');
  });

  it('gives every operation an id, a 200 answer (a redirect its 302) and a schema for each JSON body', () => {
    for (const [path, item] of Object.entries(OPENAPI_DOCUMENT.paths) as Array<[string, Record<string, any>]>) {
      for (const method of Object.keys(item).filter((key) => OPERATIONS.includes(key))) {
        const operation = item[method];
        assert.equal(typeof operation.operationId, 'string', `${method} ${path}`);
        assert.ok(operation.responses['200'] ?? operation.responses[200] ?? operation.responses[302], `${method} ${path} has no 200`);
        const body = operation.requestBody?.content?.['application/json'];
        if (body !== undefined) assert.ok(body.schema, `${method} ${path}`);
      }
    }
  });

  it(`is served at ${OPENAPI_PATH} as JSON`, async (t) => {
    const app = await readyServer(t);
    const res = await app.inject({ method: 'GET', url: OPENAPI_PATH });
    assert.equal(res.statusCode, 200);
    assert.match(String(res.headers['content-type']), /^application\/json/);
    const document = res.json();
    assert.equal(document.openapi, '3.1.0');
    assert.deepEqual(Object.keys(document.paths).sort(), Object.keys(OPENAPI_DOCUMENT.paths).sort());
  });

  it('resolves every $ref to a component schema', () => {
    const text = JSON.stringify(OPENAPI_DOCUMENT);
    const refs = [...text.matchAll(/"\$ref":"#\/components\/schemas\/([^"]+)"/g)].map((match) => match[1]!);
    assert.ok(refs.length > 0);
    for (const name of refs) assert.ok(name in OPENAPI_DOCUMENT.components.schemas, `unresolved $ref ${name}`);
  });
});
