import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, it, type TestContext } from 'node:test';
import { deflateSync, gunzipSync, gzipSync } from 'node:zlib';
import { buildHttpServer } from '../../../src/protocol/http/index.js';
import { FakeCore } from './fake-core.js';

function setup(t: TestContext, options: { bodyLimitBytes?: number } = {}) {
  const core = new FakeCore();
  const app = buildHttpServer(core, options);
  t.after(() => app.close());
  return { core, app };
}

function int32(...values: number[]): Buffer {
  const buf = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => buf.writeInt32LE(v, i * 4));
  return buf;
}

/** A request the way tritonclient sends one: JSON header, binary tensors, no Content-Type. */
function binaryRequest(header: object, ...tensors: Buffer[]) {
  const json = Buffer.from(JSON.stringify(header));
  return {
    headers: { 'inference-header-content-length': String(json.length) },
    payload: Buffer.concat([json, ...tensors]),
  };
}

function splitResponse(body: Buffer, headerLength: string | string[] | number | undefined) {
  const length = Number(headerLength);
  return { header: JSON.parse(body.subarray(0, length).toString()), binary: body.subarray(length) };
}

const SUM_JSON = {
  id: 'abc',
  parameters: { steps: 4, seed: 7, guidance_scale: 7.5, scheduler: 'euler' },
  inputs: [
    { name: 'A', shape: [2, 2], datatype: 'INT32', data: [1, 2, 3, 4] },
    { name: 'B', shape: [2, 2], datatype: 'INT32', data: [[10, 20], [30, 40]] },
  ],
};

describe('HTTP infer route', () => {
  it('runs a JSON request and answers JSON, echoing the id and passing parameters through', async (t) => {
    const { app, core } = setup(t);
    const res = await app.inject({ method: 'POST', url: '/v2/models/sum/infer', payload: SUM_JSON });
    assert.equal(res.statusCode, 200);
    assert.match(String(res.headers['content-type']), /^application\/json/);
    assert.equal(res.headers['inference-header-content-length'], undefined);
    assert.deepEqual(res.json(), {
      id: 'abc', model_name: 'sum', model_version: '1',
      outputs: [{ name: 'SUM', datatype: 'INT32', shape: [2, 2], data: [11, 22, 33, 44] }],
    });
    assert.deepEqual(core.inferCalls[0].parameters, SUM_JSON.parameters);
    assert.equal(core.inferCalls[0].model_version, undefined);
  });

  it('passes the URL version to the core', async (t) => {
    const { app, core } = setup(t);
    const res = await app.inject({ method: 'POST', url: '/v2/models/sum/versions/1/infer', payload: SUM_JSON });
    assert.equal(res.statusCode, 200);
    assert.equal(core.inferCalls[0].model_version, '1');
  });

  it('takes binary inputs with no Content-Type and answers binary when binary_data_output is set', async (t) => {
    const { app, core } = setup(t);
    const req = binaryRequest({
      parameters: { binary_data_output: true, steps: 2 },
      inputs: [
        { name: 'A', shape: [3], datatype: 'INT32', parameters: { binary_data_size: 12 } },
        { name: 'B', shape: [3], datatype: 'INT32', parameters: { binary_data_size: 12 } },
      ],
    }, int32(1, 2, 3), int32(-1, 5, 100));
    const res = await app.inject({ method: 'POST', url: '/v2/models/sum/infer', ...req });
    assert.equal(res.statusCode, 200, res.body);
    assert.equal(res.headers['content-type'], 'application/octet-stream');
    const { header, binary } = splitResponse(res.rawPayload, res.headers['inference-header-content-length']);
    assert.deepEqual(header.outputs, [{ name: 'SUM', datatype: 'INT32', shape: [3], parameters: { binary_data_size: 12 } }]);
    assert.deepEqual(binary, int32(0, 7, 103));
    assert.deepEqual(core.inferCalls[0].parameters, { steps: 2 });
    assert.equal(core.inferCalls[0].inputs[0].parameters, undefined);
  });

  it('mixes binary and JSON outputs; per-output binary_data overrides the request default', async (t) => {
    const { app } = setup(t);
    const prompt = Buffer.concat([int32(0), int32(6), Buffer.from('日本')]);
    const req = binaryRequest({
      parameters: { binary_data_output: true },
      inputs: [
        { name: 'prompt', shape: [2], datatype: 'BYTES', parameters: { binary_data_size: prompt.length } },
        { name: 'flags', shape: [2], datatype: 'BOOL', data: [true, false] },
        { name: 'latents', shape: [1, 2], datatype: 'FP16', parameters: { binary_data_size: 4 } },
      ],
      outputs: [
        { name: 'prompt', parameters: { binary_data: false } },
        { name: 'flags' },
        { name: 'latents', parameters: { binary_data: false } },
      ],
    }, prompt, Buffer.from([0x00, 0x3c, 0x00, 0xc0]));
    const res = await app.inject({ method: 'POST', url: '/v2/models/echo/infer', ...req });
    assert.equal(res.statusCode, 200, res.body);
    const { header, binary } = splitResponse(res.rawPayload, res.headers['inference-header-content-length']);
    assert.deepEqual(header.outputs[0], { name: 'prompt', datatype: 'BYTES', shape: [2], data: ['', '日本'] });
    assert.deepEqual(header.outputs[1].parameters, { binary_data_size: 2 });
    // FP16 has no JSON form, so it comes back binary even though JSON was asked for.
    assert.deepEqual(header.outputs[2].parameters, { binary_data_size: 4 });
    assert.deepEqual(header.parameters, { echoed: true });
    assert.deepEqual([...binary], [1, 0, 0x00, 0x3c, 0x00, 0xc0]);
  });

  it('accepts BYTES as {"b64"} objects in JSON', async (t) => {
    const { app } = setup(t);
    const res = await app.inject({
      method: 'POST', url: '/v2/models/echo/infer',
      payload: { inputs: [{ name: 'img', shape: [1], datatype: 'BYTES', data: [{ b64: Buffer.from([0xff, 1]).toString('base64') }] }] },
    });
    assert.equal(res.statusCode, 200, res.body);
    assert.deepEqual(res.json().outputs[0].data, [{ b64: '/wE=' }]);
  });

  const BAD: Array<[string, object, RegExp]> = [
    ['element count', { inputs: [{ name: 'x', shape: [2, 2], datatype: 'INT32', data: [1, 2, 3] }] },
      /^input 'x' has 3 elements but shape \[2,2\] needs 4$/],
    ['nested shape', { inputs: [{ name: 'prompt', shape: [1, 2], datatype: 'BYTES', data: [['a'], ['b']] }] },
      /^unexpected shape for input 'prompt'/],
    ['FP16 in JSON', { inputs: [{ name: 'h', shape: [1], datatype: 'FP16', data: [1] }] }, /datatype FP16 has no JSON form/],
    ['missing shape', { inputs: [{ name: 'x', datatype: 'INT32', data: [1] }] },
      /^invalid request body: \/inputs\/0 must have required property 'shape'$/],
    ['bad datatype', { inputs: [{ name: 'x', shape: [1], datatype: 'INT128', data: [1] }] },
      /\/inputs\/0\/datatype must be equal to one of the allowed values \(BOOL, .*BYTES\)/],
    ['negative dim', { inputs: [{ name: 'x', shape: [-1], datatype: 'INT32', data: [1] }] }, /\/inputs\/0\/shape\/0 must be >= 0/],
    ['object parameter', { inputs: [], parameters: { steps: { n: 1 } } }, /\/parameters\/steps must be string,number,boolean/],
    ['no inputs', { id: 'x' }, /must have required property 'inputs'/],
  ];
  for (const [what, payload, message] of BAD) {
    it(`answers 400 {"error"} for ${what}`, async (t) => {
      const { app, core } = setup(t);
      const res = await app.inject({ method: 'POST', url: '/v2/models/echo/infer', payload });
      assert.equal(res.statusCode, 400);
      assert.match(res.json().error, message);
      assert.equal(core.inferCalls.length, 0);
    });
  }

  it('answers 400 for malformed JSON, an empty body, and a bad header length', async (t) => {
    const { app } = setup(t);
    const url = '/v2/models/echo/infer';
    const malformed = await app.inject({ method: 'POST', url, payload: '{"inputs": [', headers: { 'content-type': 'application/json' } });
    assert.equal(malformed.statusCode, 400);
    assert.match(malformed.json().error, /^malformed JSON in inference request header: /);
    const empty = await app.inject({ method: 'POST', url });
    assert.equal(empty.statusCode, 400);
    assert.deepEqual(empty.json(), { error: 'the inference request body is empty' });
    const tooLong = await app.inject({ method: 'POST', url, payload: '{"inputs":[]}', headers: { 'inference-header-content-length': '99' } });
    assert.equal(tooLong.statusCode, 400);
    assert.match(tooLong.json().error, /Inference-Header-Content-Length 99 exceeds the request body of 13 bytes/);
    const notNumber = await app.inject({ method: 'POST', url, payload: '{"inputs":[]}', headers: { 'inference-header-content-length': 'ten' } });
    assert.equal(notNumber.statusCode, 400);
    assert.match(notNumber.json().error, /must be one non-negative integer, got 'ten'/);
    const cut = await app.inject({ method: 'POST', url, payload: '{"inputs":[]}', headers: { 'inference-header-content-length': '5' } });
    assert.equal(cut.statusCode, 400);
    assert.match(cut.json().error, /^malformed JSON in inference request header/);
  });

  it('answers 400 when binary sizes disagree with the body or the shape', async (t) => {
    const { app } = setup(t);
    const url = '/v2/models/echo/infer';
    const input = (size: number) => ({ inputs: [{ name: 'x', shape: [2], datatype: 'INT32', parameters: { binary_data_size: size } }] });
    const short = await app.inject({ method: 'POST', url, ...binaryRequest(input(8), int32(1)) });
    assert.match(short.json().error, /input 'x': binary_data_size 8 exceeds the 4 bytes/);
    const extra = await app.inject({ method: 'POST', url, ...binaryRequest(input(8), int32(1, 2, 3)) });
    assert.match(extra.json().error, /4 bytes of binary data that no input's binary_data_size claims/);
    const shape = await app.inject({ method: 'POST', url, ...binaryRequest(input(4), int32(1)) });
    assert.equal(shape.statusCode, 400);
    assert.match(shape.json().error, /input 'x' has 4 bytes of INT32 data but shape \[2\] needs 8/);
  });

  it('maps core failures: unknown model 400, plain errors 500, both as {"error"}', async (t) => {
    const { app } = setup(t);
    const missing = await app.inject({ method: 'POST', url: '/v2/models/nope/infer', payload: { inputs: [] } });
    assert.equal(missing.statusCode, 400);
    assert.deepEqual(missing.json(), { error: "unknown model 'nope'" });
    const boom = await app.inject({ method: 'POST', url: '/v2/models/boom/infer', payload: { inputs: [] } });
    assert.equal(boom.statusCode, 500);
    assert.deepEqual(boom.json(), { error: 'backend exploded' });
  });

  it('inflates gzip and deflate request bodies, header length counted after inflating', async (t) => {
    const { app } = setup(t);
    const req = binaryRequest({
      inputs: [{ name: 'A', shape: [1], datatype: 'INT32', parameters: { binary_data_size: 4 } },
        { name: 'B', shape: [1], datatype: 'INT32', data: [2] }],
    }, int32(40));
    for (const [encoding, compress] of [['gzip', gzipSync], ['deflate', deflateSync]] as const) {
      const res = await app.inject({
        method: 'POST', url: '/v2/models/sum/infer',
        headers: { ...req.headers, 'content-encoding': encoding }, payload: compress(req.payload),
      });
      assert.equal(res.statusCode, 200, `${encoding}: ${res.body}`);
      assert.deepEqual(res.json().outputs[0].data, [42]);
    }
    const br = await app.inject({
      method: 'POST', url: '/v2/models/sum/infer', headers: { 'content-encoding': 'br' }, payload: 'xx',
    });
    assert.equal(br.statusCode, 400);
    assert.match(br.json().error, /Content-Encoding 'br' is not supported/);
    const corrupt = await app.inject({
      method: 'POST', url: '/v2/models/sum/infer', headers: { 'content-encoding': 'gzip' }, payload: 'not gzip',
    });
    assert.equal(corrupt.statusCode, 400);
    assert.match(corrupt.json().error, /could not inflate the gzip request body/);
  });

  it('answers 413 for bodies over the limit, raw or once inflated', async (t) => {
    const { app } = setup(t, { bodyLimitBytes: 1024 });
    const big = { inputs: [{ name: 'p', shape: [1], datatype: 'BYTES', data: ['x'.repeat(2000)] }] };
    const raw = await app.inject({ method: 'POST', url: '/v2/models/echo/infer', payload: big });
    assert.equal(raw.statusCode, 413);
    assert.ok(typeof raw.json().error === 'string');
    const zipped = gzipSync(JSON.stringify(big));
    assert.ok(zipped.length < 1024);
    const inflated = await app.inject({
      method: 'POST', url: '/v2/models/echo/infer', headers: { 'content-encoding': 'gzip' }, payload: zipped,
    });
    assert.equal(inflated.statusCode, 413);
    assert.ok(typeof inflated.json().error === 'string');
  });

  it('compresses large responses when Accept-Encoding allows gzip', async (t) => {
    const { app } = setup(t);
    const values = Array.from({ length: 1000 }, (_, i) => i % 7);
    const payload = { inputs: [{ name: 'x', shape: [1000], datatype: 'INT32', data: values }] };
    const res = await app.inject({
      method: 'POST', url: '/v2/models/echo/infer', headers: { 'accept-encoding': 'br;q=1, gzip' }, payload,
    });
    assert.equal(res.statusCode, 200);
    assert.equal(res.headers['content-encoding'], 'gzip');
    assert.deepEqual(JSON.parse(gunzipSync(res.rawPayload).toString()).outputs[0].data, values);
    const refused = await app.inject({
      method: 'POST', url: '/v2/models/echo/infer', headers: { 'accept-encoding': 'gzip;q=0' }, payload,
    });
    assert.equal(refused.headers['content-encoding'], undefined);
    assert.deepEqual(refused.json().outputs[0].data, values);
  });

  it('aborts the core request when the client disconnects first', { timeout: 10_000 }, async (t) => {
    const { app, core } = setup(t);
    await app.listen({ port: 0, host: '127.0.0.1' });
    const { port } = app.server.address() as AddressInfo;
    const req = http.request({ port, host: '127.0.0.1', method: 'POST', path: '/v2/models/hang/infer' });
    req.on('error', () => {}); // the socket is destroyed on purpose
    req.end(JSON.stringify({ inputs: [] }));
    const signal = await core.hangEntered;
    assert.equal(signal.aborted, false);
    const aborted = new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
    req.destroy();
    await aborted;
    assert.equal((signal.reason as Error).message, 'client disconnected before the response was sent');
  });

  it('does not abort requests that complete', async (t) => {
    const { app, core } = setup(t);
    const res = await app.inject({ method: 'POST', url: '/v2/models/sum/infer', payload: SUM_JSON });
    assert.equal(res.statusCode, 200);
    assert.equal(core.signals[0].aborted, false);
  });
});
