import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  InferHttpError, decodeBytesElements, decodeInferResponseBody, encodeBytesElements, inferOverHttp,
} from '../../../src/cli/client-http.js';
import type { InferRequest } from '../../../src/core/types.js';
import {
  BROKEN_MESSAGE, BROKEN_MODEL, HTML_ERROR_MODEL, IMAGE_HEIGHT, IMAGE_WIDTH, expectedPixels,
  startFakeInferServer,
} from './fake-infer-server.js';

function promptRequest(model: string, prompts: string[]): InferRequest {
  return {
    model_name: model,
    inputs: [{
      name: 'prompt', datatype: 'BYTES', shape: [prompts.length, 1], data: encodeBytesElements(prompts),
    }],
    outputs: [{ name: 'generated_image' }],
    parameters: { steps: 4, seed: 7, scheduler: 'euler' },
  };
}

test('BYTES elements are 4-byte little-endian lengths followed by UTF-8 bytes', () => {
  const data = encodeBytesElements(['ab', 'é']);
  assert.deepEqual([...data], [2, 0, 0, 0, 0x61, 0x62, 2, 0, 0, 0, 0xc3, 0xa9]);
  assert.deepEqual(decodeBytesElements(data), ['ab', 'é']);
  assert.throws(() => decodeBytesElements(Buffer.from([5, 0, 0, 0, 1])), /truncated element/);
});

test('inferOverHttp sends a binary-extension request and parses the binary response', async (t) => {
  const server = await startFakeInferServer();
  t.after(() => server.close());

  const response = await inferOverHttp(server.baseUrl, promptRequest('tiny_sd', ['a cat', 'a cat']));

  // What the server received.
  assert.equal(server.received.length, 1);
  const [received] = server.received;
  assert.equal(received.url, '/v2/models/tiny_sd/infer');
  assert.equal(received.headers['content-type'], 'application/octet-stream');
  const headerLength = Number(received.headers['inference-header-content-length']);
  const promptBytes = encodeBytesElements(['a cat', 'a cat']);
  assert.equal(received.bodyLength, headerLength + promptBytes.length);
  const [prompt] = received.header.inputs;
  assert.equal(prompt.name, 'prompt');
  assert.equal(prompt.datatype, 'BYTES');
  assert.deepEqual(prompt.shape, [2, 1]);
  assert.equal(prompt.parameters.binary_data_size, promptBytes.length);
  assert.deepEqual(decodeBytesElements(prompt.data), ['a cat', 'a cat']);
  assert.deepEqual(received.header.outputs, [
    { name: 'generated_image', parameters: { binary_data: true } },
  ]);
  assert.deepEqual(received.header.parameters, { steps: 4, seed: 7, scheduler: 'euler' });

  // What the client made of the answer.
  assert.equal(response.model_name, 'tiny_sd');
  assert.equal(response.model_version, '1');
  assert.equal(response.outputs.length, 1);
  const [image] = response.outputs;
  assert.equal(image.name, 'generated_image');
  assert.equal(image.datatype, 'UINT8');
  assert.deepEqual(image.shape, [2, IMAGE_HEIGHT, IMAGE_WIDTH, 3]);
  assert.ok(image.data.equals(Buffer.concat([expectedPixels(0), expectedPixels(1)])));
  assert.deepEqual(image.parameters, {});
});

test('inferOverHttp throws InferHttpError with the status and the JSON error message', async (t) => {
  const server = await startFakeInferServer();
  t.after(() => server.close());

  await assert.rejects(
    inferOverHttp(server.baseUrl, promptRequest(BROKEN_MODEL, ['x'])),
    (error: unknown) => {
      assert.ok(error instanceof InferHttpError);
      assert.equal(error.status, 400);
      assert.equal(error.message, BROKEN_MESSAGE);
      return true;
    },
  );
});

test('inferOverHttp reports a non-JSON error body as its text', async (t) => {
  const server = await startFakeInferServer();
  t.after(() => server.close());

  await assert.rejects(
    inferOverHttp(server.baseUrl, promptRequest(HTML_ERROR_MODEL, ['x'])),
    { name: 'InferHttpError', status: 502, message: '<html>bad gateway</html>' },
  );
});

test('decodeInferResponseBody rejects a header length past the body and outputs without binary data', () => {
  const json = Buffer.from(JSON.stringify({
    model_name: 'm', outputs: [{ name: 'o', datatype: 'UINT8', shape: [1], data: [1] }],
  }));
  assert.throws(() => decodeInferResponseBody(json, json.length + 1), /Inference-Header-Content-Length/);
  assert.throws(() => decodeInferResponseBody(json, json.length), /output 'o' came back without binary data/);
});
