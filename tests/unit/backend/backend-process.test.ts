import assert from 'node:assert/strict';
import { once } from 'node:events';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';

import { BackendProcess, type BackendProcessOptions } from '../../../src/backend/index.js';
import type { InferRequest, InferResponse } from '../../../src/core/types.js';
import { SdserveError } from '../../../src/errors.js';
import { ROOT, startOptions, TIMEOUT_MS } from './start-options.js';

function outputConfig(names: string[], dataType: string) {
  return names.map((name) => ({ name, data_type: dataType, dims: [4] }));
}

function options(model: string, extra: Partial<BackendProcessOptions> = {}, parameters: Record<string, string> = {}) {
  const logs: string[] = [];
  const modelConfig = {
    name: model,
    backend: 'python',
    output: outputConfig(['OUTPUT0', 'OUTPUT1'], 'TYPE_FP32'),
    parameters: Object.fromEntries(Object.entries(parameters).map(([k, v]) => [k, { string_value: v }])),
  };
  const opts: BackendProcessOptions = {
    ...startOptions(model, modelConfig, { info: (m) => logs.push(m), warn: (m) => logs.push(m), error: (m) => logs.push(m) }),
    ...extra,
  };
  return { opts, logs };
}

async function startBackend(t: TestContext, opts: BackendProcessOptions): Promise<BackendProcess> {
  const backend = await BackendProcess.start(opts);
  t.after(() => backend.kill());
  return backend;
}

function fp32(values: number[]): Buffer {
  return Buffer.from(new Float32Array(values).buffer);
}

function readFp32(data: Buffer): number[] {
  return Array.from({ length: data.length / 4 }, (_, i) => data.readFloatLE(i * 4));
}

function addSubRequest(id: string, in0: number[], in1: number[], outputs?: string[]): InferRequest {
  return {
    id,
    model_name: 'add_sub',
    model_version: '1',
    inputs: [
      { name: 'INPUT0', datatype: 'FP32', shape: [4], data: fp32(in0) },
      { name: 'INPUT1', datatype: 'FP32', shape: [4], data: fp32(in1) },
    ],
    ...(outputs ? { outputs: outputs.map((name) => ({ name })) } : {}),
    parameters: {},
  };
}

function stepsRequest(id: string, steps: number): InferRequest {
  const data = Buffer.alloc(4);
  data.writeInt32LE(steps);
  return { id, model_name: 'slow_steps', inputs: [{ name: 'STEPS', datatype: 'INT32', shape: [1], data }], parameters: {} };
}

function outputsOf(result: InferResponse | SdserveError): Record<string, number[]> {
  assert.ok(!(result instanceof SdserveError), `expected a response, got ${String(result)}`);
  return Object.fromEntries(result.outputs.map((o) => [o.name, readFp32(o.data)]));
}

test('add_sub answers every request of a batch, and concurrent batches by correlation id', async (t) => {
  const { opts } = options('add_sub');
  const backend = await startBackend(t, opts);
  assert.equal(backend.hello?.pid, backend.pid);
  assert.ok(backend.isAlive);

  const [batch, single] = await Promise.all([
    backend.execute([
      addSubRequest('a', [1, 2, 3, 4], [1, 1, 1, 1]),
      addSubRequest('b', [10, 20, 30, 40], [0.5, 0.5, 0.5, 0.5], ['OUTPUT1']),
    ]),
    backend.execute([addSubRequest('c', [0, 0, 0, 0], [2, 2, 2, 2])]),
  ]);

  assert.equal(batch.length, 2);
  assert.deepEqual(outputsOf(batch[0]), { OUTPUT0: [2, 3, 4, 5], OUTPUT1: [0, 1, 2, 3] });
  assert.deepEqual(outputsOf(batch[1]), { OUTPUT1: [9.5, 19.5, 29.5, 39.5] });
  assert.deepEqual(outputsOf(single[0]), { OUTPUT0: [2, 2, 2, 2], OUTPUT1: [-2, -2, -2, -2] });
  const first = batch[0] as InferResponse;
  assert.deepEqual([first.id, first.model_name, first.model_version, first.outputs[0].datatype, first.outputs[0].shape],
    ['a', 'add_sub', '1', 'FP32', [4]]);
  assert.equal(await backend.health(TIMEOUT_MS), true);
});

test('a model error for one request leaves the others in the batch answered', async (t) => {
  const { opts } = options('errors_per_request');
  const backend = await startBackend(t, opts);

  const results = await backend.execute([
    addSubRequest('ok1', [1, 1, 1, 1], [1, 1, 1, 1]),
    addSubRequest('bad', [-1, 1, 1, 1], [1, 1, 1, 1]),
    addSubRequest('ok2', [2, 2, 2, 2], [1, 1, 1, 1]),
  ]);

  assert.deepEqual(outputsOf(results[0]), { OUTPUT0: [2, 2, 2, 2] });
  assert.ok(results[1] instanceof SdserveError);
  assert.equal(results[1].message, 'INPUT0 must be non-negative');
  assert.equal(results[1].code, 'SDS_ERR_INVALID_ARG');
  assert.deepEqual(outputsOf(results[2]), { OUTPUT0: [3, 3, 3, 3] });
});

test('an execute that raises fails every request of its batch and the backend keeps serving', async (t) => {
  const { opts } = options('errors_per_request');
  const backend = await startBackend(t, opts);
  const raising = { ...addSubRequest('r', [1, 1, 1, 1], [1, 1, 1, 1]), parameters: { raise: true } };

  const results = await backend.execute([raising, addSubRequest('s', [1, 1, 1, 1], [1, 1, 1, 1])]);

  for (const result of results) {
    assert.ok(result instanceof SdserveError);
    assert.equal(result.code, 'SDS_ERR_BACKEND');
    assert.equal(result.message, 'TritonModelException: asked to fail the whole batch');
  }
  assert.deepEqual(outputsOf((await backend.execute([addSubRequest('t', [1, 1, 1, 1], [0, 0, 0, 0])]))[0]),
    { OUTPUT0: [1, 1, 1, 1] });
});

test('a load failure surfaces the backend reason and leaves no process behind', async () => {
  const { opts, logs } = options('initialize_fails');

  await assert.rejects(BackendProcess.start(opts), (err: unknown) => {
    assert.ok(err instanceof SdserveError);
    assert.equal(err.code, 'SDS_ERR_BACKEND');
    assert.match(err.message, /^FileNotFoundError: weights not found at .*initialize_fails\/1\/weights\.safetensors$/);
    return true;
  });

  assert.ok(logs.some((line) => line.startsWith('[initialize_fails_0] ERROR sdserve.backend: LOAD_REQUEST failed')));
  const pid = Number(/\(pid (\d+)\)/.exec(logs.find((line) => line.includes('INFO sdserve.backend: loading')) ?? '')?.[1]);
  assert.ok(pid > 0);
  assert.throws(() => process.kill(pid, 0), { code: 'ESRCH' });
});

test('a backend that dies before hello reports its last stderr line', async () => {
  const { opts } = options('add_sub', { pythonPath: [join(ROOT, 'tests')], env: { PYTHONPATH: '' } });
  await assert.rejects(BackendProcess.start(opts), {
    code: 'SDS_ERR_BACKEND',
    message: /^backend add_sub_0 exited \(code 1\) before it was ready: .*No module named sdserve_backend/,
  });
});

test('a python executable that does not exist is a start failure, not a crash', async () => {
  const { opts } = options('add_sub', { pythonExecutable: join(ROOT, 'no-such-python') });
  await assert.rejects(BackendProcess.start(opts), { code: 'SDS_ERR_BACKEND', message: /ENOENT/ });
});

test('progress is reported per request and step, then the response arrives', async (t) => {
  const { opts } = options('slow_steps', {}, { step_seconds: '0' });
  const backend = await startBackend(t, opts);
  const progress: Array<[number, number, number]> = [];

  const [first, second] = await backend.execute([stepsRequest('p', 2), stepsRequest('q', 1)],
    (index, step, steps) => progress.push([index, step, steps]));

  assert.deepEqual(progress, [[0, 0, 2], [0, 1, 2], [0, 2, 2], [1, 0, 1], [1, 1, 1]]);
  assert.ok(!(first instanceof SdserveError) && !(second instanceof SdserveError));
  assert.equal(first.outputs[0].data.readInt32LE(0), 2);
  assert.equal(second.outputs[0].data.readInt32LE(0), 1);
});

test('cancel reaches a request while its execute runs', async (t) => {
  const { opts } = options('slow_steps');
  const backend = await startBackend(t, opts);

  const [result] = await backend.execute([stepsRequest('long', 1)], () => backend.cancel(['long']));

  assert.ok(result instanceof SdserveError);
  assert.equal(result.code, 'SDS_ERR_CANCELLED');
  assert.equal(result.message, 'cancelled after 0 steps');
});

test('SIGKILL mid-request rejects the in-flight execute and emits exit once', async (t) => {
  const { opts } = options('slow_steps');
  const backend = await startBackend(t, opts);
  const exits: Array<[number | null, string | null]> = [];
  backend.on('exit', (code, signal) => exits.push([code, signal]));
  const exited = once(backend, 'exit');
  // The health probe is answered even while execute runs: that is what makes it a liveness probe.
  let healthyMidRequest: Promise<boolean> | undefined;

  const running = backend.execute([stepsRequest('doomed', 1)], () => {
    healthyMidRequest ??= backend.health(TIMEOUT_MS).then((healthy) => {
      process.kill(backend.pid!, 'SIGKILL');
      return healthy;
    });
  });

  await assert.rejects(running, {
    code: 'SDS_ERR_BACKEND_DIED',
    message: 'backend slow_steps_0 exited (SIGKILL) while running this request',
  });
  assert.equal(await healthyMidRequest, true);
  assert.deepEqual(await exited, [null, 'SIGKILL']);
  assert.deepEqual(exits, [[null, 'SIGKILL']]);
  assert.equal(backend.isAlive, false);
  assert.equal(await backend.health(TIMEOUT_MS), false);
  await assert.rejects(backend.execute([stepsRequest('late', 1)]), { code: 'SDS_ERR_BACKEND_DIED' });
});

test('stop() finalizes the model and the process exits with code 0', async (t) => {
  const { opts, logs } = options('add_sub');
  let sawFinalize!: () => void;
  const finalizeLogged = new Promise<void>((res) => { sawFinalize = res; });
  opts.logger = {
    info: (m) => { logs.push(m); if (m.includes('add_sub finalized')) sawFinalize(); },
    warn: (m) => logs.push(m),
    error: (m) => logs.push(m),
  };
  const backend = await startBackend(t, opts);
  const exited = once(backend, 'exit');

  await backend.stop(TIMEOUT_MS);

  assert.deepEqual(await exited, [0, null]);
  assert.equal(backend.isAlive, false);
  await finalizeLogged;
  assert.ok(logs.includes('[add_sub_0] INFO sdserve.model: add_sub finalized'));
});

test('stop() kills a backend that does not finish within the grace period', async (t) => {
  const { opts } = options('slow_steps');
  const backend = await startBackend(t, opts);
  const exited = once(backend, 'exit');
  let stopping: Promise<void> | undefined;

  const running = backend.execute([stepsRequest('busy', 1)], () => { stopping ??= backend.stop(0); });

  await assert.rejects(running, { code: 'SDS_ERR_BACKEND_DIED' });
  await stopping;
  assert.deepEqual(await exited, [null, 'SIGKILL']);
});
