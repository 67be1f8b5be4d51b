/**
 * A load the backend refuses for the model's config is the caller's error, as Triton answers a
 * model whose config is invalid: HTTP 400 and gRPC INVALID_ARGUMENT, with the backend's message.
 * A model that fails to load for any other reason is the server's error (500, INTERNAL). Either
 * way the server serves on, the versions loaded before included.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { credentials, status, type ServiceError } from '@grpc/grpc-js';
import { loadInferenceService } from '../../src/protocol/grpc/index.js';
import { inferImage } from './support/binary-infer.js';
import { makeRepository, startServerProcess, type ServerProcess } from './support/server-process.js';

const pythonModel = (name: string) => `name: "${name}"
backend: "python"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
instance_group [ { kind: KIND_CPU, count: 1 } ]
`;

const raisingModel = (raised: string) => `import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        raise ${raised}

    def execute(self, requests):
        return []
`;

let server: ServerProcess;
let repository: ReturnType<typeof makeRepository>;
let grpc: { close(): void; load(model: string, config?: object): Promise<void> };
/** tiny_sd's config as served, the base of each override. */
let tinyConfig: { parameters: Record<string, { string_value: string }> };

before(async () => {
  repository = makeRepository({
    crashes: { config: pythonModel('crashes'), files: { '1/model.py': raisingModel('RuntimeError("the device fell off the bus")') } },
    refuses: {
      config: pythonModel('refuses'),
      files: { '1/model.py': raisingModel('pb_utils.TritonModelException("parameter \'mode\' must be fast or slow", code=pb_utils.TritonError.INVALID_ARG)') },
    },
  }, ['tiny_sd']);
  server = await startServerProcess(['--model-repository', repository.dir, '--model-control-mode', 'explicit',
    '--load-model', 'tiny_sd']);
  const address = /Started GRPCInferenceService at (\S+)/.exec(server.stdout())?.[1];
  assert.ok(address, 'gRPC address printed');
  const Service = await loadInferenceService();
  const client = new Service(address, credentials.createInsecure()) as any;
  grpc = {
    close: () => client.close(),
    load: (model, config) => new Promise((resolve, reject) => {
      const parameters = config === undefined ? {} : { config: { string_param: JSON.stringify(config) } };
      client.RepositoryModelLoad({ model_name: model, parameters }, (err: ServiceError | null) => (err ? reject(err) : resolve()));
    }),
  };
  tinyConfig = await (await fetch(`${server.url}/v2/models/tiny_sd/config`)).json() as typeof tinyConfig;
});

after(async () => {
  grpc?.close();
  await server?.stop();
  repository?.remove();
});

/** tiny_sd's served config with one parameter set. */
function withParameter(name: string, value: string): object {
  return { ...tinyConfig, parameters: { ...tinyConfig.parameters, [name]: { string_value: value } } };
}

function httpLoad(model: string, config?: object): Promise<Response> {
  return fetch(`${server.url}/v2/repository/models/${model}/load`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify(config === undefined ? {} : { parameters: { config: JSON.stringify(config) } }),
  });
}

async function assertTinySdServes(): Promise<void> {
  const result = await inferImage(server.url, 'tiny_sd', ['still here'], { steps: 1, width: 64, height: 64, seed: 1 });
  assert.equal(result.status, 200, result.error);
}

test('HTTP: a config override with a diffusion parameter the backend refuses answers 400 with its message', async () => {
  const response = await httpLoad('tiny_sd', withParameter('lora_slots', '1'));
  const { error } = await response.json() as { error: string };

  assert.equal(response.status, 400, error);
  assert.equal(error, "failed to load 'tiny_sd' version 1: config parameter 'lora_slots' must be 0 (off) or an integer "
    + "from 2 to 256, got '1'; the versions loaded before keep serving");
  const index = await (await fetch(`${server.url}/v2/repository/index`, { method: 'POST' })).json() as Array<{ name: string; state: string }>;
  assert.equal(index.find((row) => row.name === 'tiny_sd')?.state, 'READY');
  await assertTinySdServes();
});

test('HTTP: an unknown scheduler name in a config override answers 400 naming it', async () => {
  const response = await httpLoad('tiny_sd', withParameter('scheduler', 'no_such_scheduler'));
  const { error } = await response.json() as { error: string };

  assert.equal(response.status, 400, error);
  assert.match(error, /^failed to load 'tiny_sd' version 1: config parameter scheduler 'no_such_scheduler' is not supported; use one of: /);
  await assertTinySdServes();
});

test('gRPC: a config override with a diffusion parameter the backend refuses is INVALID_ARGUMENT with its message', async () => {
  await assert.rejects(grpc.load('tiny_sd', withParameter('engine_fp8', 'dynamic')), (err: ServiceError) => {
    assert.equal(err.code, status.INVALID_ARGUMENT, err.details);
    assert.match(err.details, /^failed to load 'tiny_sd' version 1: config parameter 'engine_fp8' must be one of 'off', 'static', got 'dynamic'; /);
    return true;
  });
  await assertTinySdServes();
});

test("a Python model that refuses its config (TritonModelException with INVALID_ARG) answers 400 / INVALID_ARGUMENT", async () => {
  const response = await httpLoad('refuses');
  const { error } = await response.json() as { error: string };
  assert.equal(response.status, 400, error);
  assert.equal(error, "failed to load 'refuses' version 1: parameter 'mode' must be fast or slow");
  await assert.rejects(grpc.load('refuses'), (err: ServiceError) => err.code === status.INVALID_ARGUMENT);

  const index = await (await fetch(`${server.url}/v2/repository/index`, { method: 'POST' })).json() as Array<{ name: string; state: string; reason: string }>;
  assert.deepEqual(index.find((row) => row.name === 'refuses'), {
    name: 'refuses', version: '1', state: 'UNAVAILABLE', reason: "parameter 'mode' must be fast or slow",
  });
});

test("a Python model whose initialize raises a RuntimeError still answers 500 / INTERNAL", async () => {
  const response = await httpLoad('crashes');
  const { error } = await response.json() as { error: string };
  assert.equal(response.status, 500, error);
  assert.equal(error, "failed to load 'crashes' version 1: RuntimeError: the device fell off the bus");
  await assert.rejects(grpc.load('crashes'), (err: ServiceError) => {
    assert.equal(err.code, status.INTERNAL, err.details);
    assert.match(err.details, /RuntimeError: the device fell off the bus/);
    return true;
  });
  await assertTinySdServes();
});
