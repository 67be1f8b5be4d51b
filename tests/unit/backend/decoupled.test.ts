import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';

import { BackendProcess } from '../../../src/backend/index.js';
import type { InferRequest, InferResponse } from '../../../src/core/types.js';
import { SdserveError } from '../../../src/errors.js';
import { startOptions, TIMEOUT_MS } from './start-options.js';

async function startBackend(t: TestContext, model: string): Promise<BackendProcess> {
  const backend = await BackendProcess.start(startOptions(model, { name: model, backend: 'python' },
    { info: () => undefined, warn: () => undefined, error: () => undefined }));
  t.after(() => backend.kill());
  return backend;
}

function fp32(values: number[]): Buffer {
  return Buffer.from(new Float32Array(values).buffer);
}

function valuesOf(response: InferResponse, name: string): number[] {
  const tensor = response.outputs.find((output) => output.name === name);
  assert.ok(tensor, `no output ${name}`);
  return Array.from({ length: tensor.data.length / 4 }, (_, i) => tensor.data.readFloatLE(i * 4));
}

function reverseRequest(id: string, value: number, parameters: InferRequest['parameters'] = {}): InferRequest {
  return {
    id,
    model_name: 'decoupled_reverse',
    inputs: [{ name: 'IN', datatype: 'FP32', shape: [4], data: fp32([value, value, value, value]) }],
    parameters,
  };
}

function addSubRequest(id: string, in0: number): InferRequest {
  return {
    id,
    model_name: 'errors_per_request',
    inputs: [
      { name: 'INPUT0', datatype: 'FP32', shape: [4], data: fp32([in0, in0, in0, in0]) },
      { name: 'INPUT1', datatype: 'FP32', shape: [4], data: fp32([1, 1, 1, 1]) },
    ],
    parameters: {},
  };
}

test('executeEach settles each request of a decoupled model as its own final response arrives', async (t) => {
  const backend = await startBackend(t, 'decoupled_reverse');
  const settledOrder: number[] = [];
  const progress: Array<[number, number, number]> = [];

  const promises = backend.executeEach([1, 2, 3].map((value, index) => reverseRequest(`r${index}`, value)),
    (index, step, steps) => progress.push([index, step, steps]));
  promises.forEach((promise, index) => void promise.then(() => settledOrder.push(index)));
  const responses = await Promise.all(promises);

  // The model answers in reverse; request 1 sends its response, then the final flag alone.
  assert.deepEqual(settledOrder, [2, 1, 0]);
  assert.deepEqual(responses.map((response) => valuesOf(response, 'OUT')), [[2, 2, 2, 2], [4, 4, 4, 4], [6, 6, 6, 6]]);
  assert.deepEqual(responses.map((response) => response.id), ['r0', 'r1', 'r2']);
  assert.deepEqual(progress, [[2, 1, 1], [1, 1, 1], [0, 1, 1]]);
});

test('execute answers a decoupled model\'s batch once every request is final', async (t) => {
  const backend = await startBackend(t, 'decoupled_reverse');

  const results = await backend.execute([reverseRequest('a', 5), reverseRequest('b', 6)]);

  assert.deepEqual(results.map((result) => valuesOf(result as InferResponse, 'OUT')), [[10, 10, 10, 10], [12, 12, 12, 12]]);
});

test('a held decoupled request leaves the backend free for others, and cancel answers it', async (t) => {
  const backend = await startBackend(t, 'decoupled_reverse');

  const [held] = backend.executeEach([reverseRequest('held', 1, { hold: true })]);
  const [other] = backend.executeEach([reverseRequest('other', 4)]);
  assert.deepEqual(valuesOf(await other, 'OUT'), [8, 8, 8, 8]);
  assert.equal(await backend.health(TIMEOUT_MS), true);

  backend.cancel(['held']);
  await assert.rejects(held, { code: 'SDS_ERR_CANCELLED', message: 'cancelled while held' });
});

test('every open request of executeEach fails with SDS_ERR_BACKEND_DIED when the backend dies', async (t) => {
  const backend = await startBackend(t, 'decoupled_reverse');
  const [held, alsoHeld] = backend.executeEach([reverseRequest('h1', 1, { hold: true }), reverseRequest('h2', 1, { hold: true })]);
  const [answered] = backend.executeEach([reverseRequest('done', 2)]);
  await answered;

  await backend.kill();

  await assert.rejects(held, { code: 'SDS_ERR_BACKEND_DIED' });
  await assert.rejects(alsoHeld, { code: 'SDS_ERR_BACKEND_DIED' });
  const [late] = backend.executeEach([reverseRequest('late', 3)]);
  await assert.rejects(late, { code: 'SDS_ERR_BACKEND_DIED' });
});

test('executeEach on a normal model resolves each request from its ExecuteResponse and rejects its errors', async (t) => {
  const backend = await startBackend(t, 'errors_per_request');

  const [ok, bad] = backend.executeEach([addSubRequest('ok', 2), addSubRequest('bad', -1)]);

  assert.deepEqual(valuesOf(await ok, 'OUTPUT0'), [3, 3, 3, 3]);
  await assert.rejects(bad, (error: unknown) => error instanceof SdserveError
    && error.code === 'SDS_ERR_INVALID_ARG' && error.message === 'INPUT0 must be non-negative');
  const raising = { ...addSubRequest('r', 1), parameters: { raise: true } };
  await assert.rejects(backend.executeEach([raising])[0],
    { code: 'SDS_ERR_BACKEND', message: 'TritonModelException: asked to fail the whole batch' });
});

test('with a listener, every answer of a decoupled model reaches it in order, final flags included', async (t) => {
  const backend = await startBackend(t, 'decoupled_reverse');
  const heard: Array<[number, number[] | undefined, boolean]> = [];

  const results = await Promise.all(backend.executeEach([1, 2].map((value, index) => reverseRequest(`l${index}`, value)), undefined,
    (index, answer) => heard.push([index, answer.response && valuesOf(answer.response, 'OUT'), answer.final])));

  // Request 1 answers first (reverse order), with its response and then the final flag alone.
  assert.deepEqual(heard, [[1, [4, 4, 4, 4], false], [1, undefined, true], [0, [2, 2, 2, 2], true]]);
  // The requests settle with no outputs of their own: the answers were the result.
  assert.deepEqual(results.map((result) => [result.id, result.outputs]), [['l0', []], ['l1', []]]);
});

test('a listener hears a decoupled model\'s error answer as an error, final', async (t) => {
  const backend = await startBackend(t, 'decoupled_reverse');
  const heard: Array<{ code?: string; final: boolean }> = [];

  const [held] = backend.executeEach([reverseRequest('held', 1, { hold: true })], undefined,
    (_, answer) => heard.push({ code: answer.error?.code, final: answer.final }));
  backend.cancel(['held']);
  await held;

  assert.deepEqual(heard, [{ code: 'SDS_ERR_CANCELLED', final: true }]);
});
