import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import { credentials, status, type Client, type ClientDuplexStream, type ServiceError } from '@grpc/grpc-js';
import type { ModelStatistics } from '../../../src/core/index.js';
import { loadInferenceService, startGrpcServer } from '../../../src/protocol/grpc/index.js';
import { FakeGrpcCore, fakeConfig } from '../../fixtures/grpc-fake-core.js';

type AnyClient = Client & Record<string, (...args: unknown[]) => unknown>;

async function setup(t: TestContext, core = new FakeGrpcCore()) {
  const server = await startGrpcServer(core, { host: '127.0.0.1', port: 0 });
  const Service = await loadInferenceService();
  const client = new Service(`127.0.0.1:${server.port}`, credentials.createInsecure()) as unknown as AnyClient;
  t.after(async () => { client.close(); await server.close(); });
  const call = (rpc: string, request: object) => new Promise<any>((resolve, reject) => {
    client[rpc](request, (err: ServiceError | null, response: unknown) => (err ? reject(err) : resolve(response)));
  });
  return { core, client, call, port: server.port };
}

const grpcError = (code: status, pattern: RegExp) => (err: unknown) => {
  const e = err as ServiceError;
  assert.equal(e.code, code, `code ${status[e.code]}: ${e.details}`);
  assert.match(e.details, pattern);
  return true;
};

const fp32 = (...values: number[]) => {
  const buf = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => buf.writeFloatLE(v, i * 4));
  return buf;
};

const until = (signal: AbortSignal) => new Promise<void>((resolve) => {
  if (signal.aborted) resolve();
  else signal.addEventListener('abort', () => resolve(), { once: true });
});

describe('gRPC health and metadata', () => {
  it('reports live and ready from the core', async (t) => {
    const { core, call } = await setup(t);
    assert.deepEqual(await call('ServerLive', {}), { live: true });
    assert.deepEqual(await call('ServerReady', {}), { ready: true });
    core.live = false;
    core.ready = false;
    assert.deepEqual(await call('ServerLive', {}), { live: false });
    assert.deepEqual(await call('ServerReady', {}), { ready: false });
  });

  it('answers ModelReady per model and version', async (t) => {
    const { call } = await setup(t);
    assert.equal((await call('ModelReady', { name: 'echo' })).ready, true);
    assert.equal((await call('ModelReady', { name: 'echo', version: '1' })).ready, true);
    assert.equal((await call('ModelReady', { name: 'echo', version: '2' })).ready, false);
    assert.equal((await call('ModelReady', { name: 'missing' })).ready, false);
  });

  it('serves server and model metadata, keeping -1 dims', async (t) => {
    const { call } = await setup(t);
    assert.deepEqual(await call('ServerMetadata', {}), { name: 'sdserve', version: '0.1.0', extensions: ['model_repository', 'statistics'] });
    assert.deepEqual(await call('ModelMetadata', { name: 'add' }), {
      name: 'add', versions: ['1'], platform: 'python',
      inputs: [{ name: 'A', datatype: 'FP32', shape: [-1, 3] }], outputs: [{ name: 'SUM', datatype: 'FP32', shape: [-1, 3] }],
    });
  });

  it('maps an unknown model to INVALID_ARGUMENT with the core message', async (t) => {
    const { call } = await setup(t);
    await assert.rejects(call('ModelMetadata', { name: 'nope' }), grpcError(status.INVALID_ARGUMENT, /^unknown model 'nope'$/));
    await assert.rejects(call('ModelConfig', { name: 'echo', version: '9' }), grpcError(status.INVALID_ARGUMENT, /has no version 9/));
  });
});

describe('gRPC ModelInfer', () => {
  it('adds raw FP32 inputs and answers raw_output_contents with the request id', async (t) => {
    const { call, core } = await setup(t);
    const response = await call('ModelInfer', {
      model_name: 'add', id: 'req-1',
      inputs: [{ name: 'A', datatype: 'FP32', shape: [1, 3] }, { name: 'B', datatype: 'FP32', shape: [1, 3] }],
      raw_input_contents: [fp32(1, 2, 3), fp32(10, 20, 30)],
    });
    assert.equal(response.id, 'req-1');
    assert.equal(response.model_name, 'add');
    assert.equal(response.model_version, '1');
    assert.deepEqual(response.outputs.map((o: any) => [o.name, o.datatype, o.shape]), [['SUM', 'FP32', [1, 3]]]);
    assert.deepEqual(response.raw_output_contents, [fp32(11, 22, 33)]);
    assert.equal(core.inferCalls[0].model_version, undefined);
  });

  it('accepts typed contents and passes request parameters to the core as plain values', async (t) => {
    const { call, core } = await setup(t);
    const response = await call('ModelInfer', {
      model_name: 'echo',
      parameters: { steps: { int64_param: 4 }, guidance: { double_param: 7.5 }, prompt: { string_param: 'cat' }, tiled: { bool_param: false } },
      inputs: [
        { name: 'flags', datatype: 'BOOL', shape: [2], contents: { bool_contents: [true, false] } },
        { name: 'small', datatype: 'INT8', shape: [2], contents: { int_contents: [-1, 5] } },
        { name: 'text', datatype: 'BYTES', shape: [1, 1], contents: { bytes_contents: [Buffer.from('héllo')] } },
      ],
    });
    assert.deepEqual(core.inferCalls[0].parameters, { steps: 4, guidance: 7.5, prompt: 'cat', tiled: false });
    const text = Buffer.from('héllo');
    const length = Buffer.alloc(4);
    length.writeUInt32LE(text.length);
    assert.deepEqual(response.raw_output_contents, [Buffer.from([1, 0]), Buffer.from([0xff, 5]), Buffer.concat([length, text])]);
    assert.deepEqual(response.parameters, {
      steps: { int64_param: 4, parameter_choice: 'int64_param' },
      guidance: { double_param: 7.5, parameter_choice: 'double_param' },
      prompt: { string_param: 'cat', parameter_choice: 'string_param' },
      tiled: { bool_param: false, parameter_choice: 'bool_param' },
    });
  });

  it('returns only the requested outputs', async (t) => {
    const { call } = await setup(t);
    const response = await call('ModelInfer', {
      model_name: 'echo',
      inputs: [{ name: 'a', datatype: 'UINT8', shape: [1] }, { name: 'b', datatype: 'UINT8', shape: [1] }],
      outputs: [{ name: 'b' }], raw_input_contents: [Buffer.from([1]), Buffer.from([2])],
    });
    assert.deepEqual(response.outputs.map((o: any) => o.name), ['b']);
    assert.deepEqual(response.raw_output_contents, [Buffer.from([2])]);
  });

  it('answers INVALID_ARGUMENT for malformed tensors without calling the core', async (t) => {
    const { call, core } = await setup(t);
    await assert.rejects(call('ModelInfer', {
      model_name: 'echo', inputs: [{ name: 'a', datatype: 'FP32', shape: [2] }], raw_input_contents: [fp32(1)],
    }), grpcError(status.INVALID_ARGUMENT, /input 'a' has 4 bytes of FP32 data but shape \[2\] needs 8/));
    await assert.rejects(call('ModelInfer', {
      model_name: 'echo', inputs: [{ name: 'a', datatype: 'FP32', shape: [1] }, { name: 'b', datatype: 'FP32', shape: [1] }],
      raw_input_contents: [fp32(1)],
    }), grpcError(status.INVALID_ARGUMENT, /expected 2 raw_input_contents/));
    assert.equal(core.inferCalls.length, 0);
  });

  it('maps a plain error from the core to INTERNAL with its message', async (t) => {
    const { call } = await setup(t);
    await assert.rejects(call('ModelInfer', { model_name: 'boom', inputs: [] }), grpcError(status.INTERNAL, /^backend exploded$/));
  });

  it('aborts the core signal when the client cancels', { timeout: 10_000 }, async (t) => {
    const { client, core } = await setup(t);
    const result = new Promise<ServiceError>((resolve) => {
      const pending = client.ModelInfer({ model_name: 'hang', inputs: [] }, (err: ServiceError) => resolve(err)) as { cancel(): void };
      void core.hangEntered.then(() => pending.cancel());
    });
    const signal = await core.hangEntered;
    assert.equal((await result).code, status.CANCELLED);
    await until(signal);
    assert.equal(signal.aborted, true);
  });
});

describe('gRPC ModelStreamInfer', () => {
  function open(client: AnyClient) {
    const stream = client.ModelStreamInfer() as ClientDuplexStream<object, any>;
    const answers: any[] = [];
    const waiters: Array<() => void> = [];
    stream.on('data', (message) => { answers.push(message); waiters.shift()?.(); });
    const next = () => new Promise<any>((resolve) => {
      const take = () => resolve(answers.shift());
      if (answers.length > 0) take(); else waiters.push(take);
    });
    const ended = new Promise<void>((resolve, reject) => { stream.on('end', resolve); stream.on('error', reject); });
    return { stream, next, ended };
  }

  it('answers each request, keeps going after a bad one and ends after the client does', { timeout: 10_000 }, async (t) => {
    const { client } = await setup(t);
    const { stream, next, ended } = open(client);
    const echo = (id: string) => ({
      model_name: 'echo', id, inputs: [{ name: 'x', datatype: 'INT32', shape: [1] }], raw_input_contents: [Buffer.from([1, 0, 0, 0])],
    });
    stream.write(echo('a'));
    const first = await next();
    assert.equal(first.error_message, '');
    assert.equal(first.infer_response.id, 'a');
    assert.deepEqual(first.infer_response.raw_output_contents, [Buffer.from([1, 0, 0, 0])]);

    stream.write({ model_name: 'missing', id: 'b', inputs: [] });
    const second = await next();
    assert.equal(second.error_message, "unknown model 'missing'");
    assert.equal(second.infer_response.id, 'b');

    stream.write({ model_name: 'echo', id: 'c', inputs: [{ name: 'x', datatype: 'INT32', shape: [2] }], raw_input_contents: [Buffer.alloc(4)] });
    assert.match((await next()).error_message, /input 'x' has 4 bytes of INT32 data but shape \[2\] needs 8/);

    stream.write(echo('d'));
    stream.end();
    assert.equal((await next()).infer_response.id, 'd');
    await ended;
  });

  it('aborts running requests when the client cancels the stream', { timeout: 10_000 }, async (t) => {
    const { client, core } = await setup(t);
    const { stream, ended } = open(client);
    stream.write({ model_name: 'hang', inputs: [] });
    const signal = await core.hangEntered;
    stream.cancel();
    await assert.rejects(ended, (err: ServiceError) => err.code === status.CANCELLED);
    await until(signal);
    assert.equal(signal.aborted, true);
  });
});

describe('gRPC ModelConfig', () => {
  it('maps the typed config onto the proto message, enums by name and maps as objects', async (t) => {
    const { call } = await setup(t);
    const { config } = await call('ModelConfig', { name: 'echo' });
    const expected = fakeConfig('echo');
    assert.equal(config.name, 'echo');
    assert.equal(config.backend, 'python');
    assert.equal(config.max_batch_size, 4);
    assert.deepEqual(config.version_policy.specific.versions, [1, 3]);
    assert.equal(config.version_policy.policy_choice, 'specific');
    assert.deepEqual(config.input.map((i: any) => [i.name, i.data_type, i.format, i.dims, i.optional]),
      [['A', 'TYPE_FP32', 'FORMAT_NONE', [-1], false], ['B', 'TYPE_STRING', 'FORMAT_NHWC', [1, 2], true]]);
    assert.deepEqual(config.input[1].reshape, { shape: [2] });
    assert.deepEqual(config.output[0].dims, [-1]);
    assert.deepEqual(config.instance_group, [{ ...expected.instance_group[0], profile: [], passive: false, host_policy: '' }]);
    assert.equal(config.scheduling_choice, 'dynamic_batching');
    const batching = config.dynamic_batching;
    assert.deepEqual(batching.preferred_batch_size, [2, 4]);
    assert.deepEqual(batching.default_queue_policy, expected.dynamic_batching!.default_queue_policy);
    // protobufjs decodes 64-bit map keys as 8-byte little-endian "hash" strings.
    const [[key, policy]] = Object.entries<any>(batching.priority_queue_policy);
    assert.equal(Buffer.from(key, 'latin1').readBigUInt64LE(), 2n);
    assert.equal(policy.max_queue_size, 3);
    assert.deepEqual(config.parameters, { steps: { string_value: '20' } });
    assert.equal(config.default_model_filename, 'model.py');
  });
});

describe('gRPC ModelStatistics', () => {
  it('reports the statistics of a named model, or of every ready model', async (t) => {
    const { call } = await setup(t);
    const named = (await call('ModelStatistics', { name: 'add' })).model_stats;
    assert.deepEqual(named.map((s: any) => [s.name, s.version, s.inference_count, s.inference_stats.success]),
      [['add', '1', 0, { count: 0, ns: 0 }]]);
    const all = (await call('ModelStatistics', {})).model_stats;
    assert.deepEqual(all.map((s: any) => s.name), ['echo']);
    await assert.rejects(call('ModelStatistics', { name: 'nope' }), grpcError(status.INVALID_ARGUMENT, /unknown model 'nope'/));
  });

  it("passes the core's statistics through", async (t) => {
    const seen: unknown[] = [];
    class CountingCore extends FakeGrpcCore {
      override statistics(name?: string, version?: string): ModelStatistics[] {
        seen.push([name, version]);
        const d = { count: 2, ns: 5000 };
        return [{
          name: 'echo', version: '1', last_inference: 1_700_000_000_000, inference_count: 4, execution_count: 2,
          inference_stats: { success: d, fail: d, queue: d, compute_input: d, compute_infer: d, compute_output: d, cache_hit: d, cache_miss: d },
          batch_stats: [{ batch_size: 2, compute_input: d, compute_infer: d, compute_output: d }],
        }];
      }
    }
    const { call } = await setup(t, new CountingCore());
    const [stats] = (await call('ModelStatistics', { name: 'echo' })).model_stats;
    assert.deepEqual(seen, [['echo', undefined]]);
    assert.equal(stats.last_inference, 1_700_000_000_000);
    assert.equal(stats.inference_count, 4);
    assert.deepEqual(stats.batch_stats[0].compute_infer, { count: 2, ns: 5000 });
  });
});

describe('gRPC model repository', () => {
  it('lists the index, all or ready only', async (t) => {
    const { call } = await setup(t);
    assert.deepEqual((await call('RepositoryIndex', {})).models.map((m: any) => [m.name, m.state, m.reason]),
      [['echo', 'READY', ''], ['broken', 'UNAVAILABLE', 'load failed']]);
    assert.deepEqual((await call('RepositoryIndex', { ready: true })).models.map((m: any) => m.name), ['echo']);
  });

  it('loads with a config override and unloads', async (t) => {
    const { call, core } = await setup(t);
    await call('RepositoryModelLoad', { model_name: 'echo' });
    await call('RepositoryModelLoad', { model_name: 'add', parameters: { config: { string_param: '{"max_batch_size": 2}' } } });
    assert.deepEqual(core.loads, [{ name: 'echo' }, { name: 'add', config: '{"max_batch_size": 2}' }]);
    await call('RepositoryModelUnload', { model_name: 'echo', parameters: { unload_dependents: { bool_param: false } } });
    assert.deepEqual(core.unloads, ['echo']);
  });

  it('refuses file overrides, unknown parameters and maps load failures', async (t) => {
    const { call, core } = await setup(t);
    await assert.rejects(call('RepositoryModelLoad', { model_name: 'echo', parameters: { 'file:1/model.py': { bytes_param: Buffer.from('x') } } }),
      grpcError(status.UNIMPLEMENTED, /file overrides \('file:1\/model.py'\) are not supported/));
    await assert.rejects(call('RepositoryModelLoad', { model_name: 'echo', parameters: { colour: { string_param: 'red' } } }),
      grpcError(status.INVALID_ARGUMENT, /unknown parameter 'colour'/));
    await assert.rejects(call('RepositoryModelLoad', { model_name: 'broken' }), grpcError(status.INVALID_ARGUMENT, /bad config/));
    await assert.rejects(call('RepositoryModelUnload', { model_name: 'nope' }), grpcError(status.INVALID_ARGUMENT, /unknown model/));
    assert.deepEqual(core.loads, []);
  });
});

describe('gRPC RPCs sdserve does not serve', () => {
  for (const rpc of ['SystemSharedMemoryStatus', 'SystemSharedMemoryRegister', 'CudaSharedMemoryUnregister', 'TraceSetting', 'LogSettings']) {
    it(`answers ${rpc} with UNIMPLEMENTED and a reason`, async (t) => {
      const { call } = await setup(t);
      await assert.rejects(call(rpc, {}), grpcError(status.UNIMPLEMENTED, new RegExp(`^${rpc} is not supported by sdserve: .+`)));
    });
  }
});
