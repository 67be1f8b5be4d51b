import assert from 'node:assert/strict';
import { cpSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { credentials, status, type ServiceError } from '@grpc/grpc-js';
import { loadInferenceService } from '../../src/protocol/grpc/index.js';
import { makeRepository, PROJECT_ROOT, startServerProcess, type ServerProcess } from './support/server-process.js';

/** One instance, one request at a time: a second request waits in the queue behind the first. */
const slowConfig = (stepSeconds: string) => `name: "slow"
backend: "python"
max_batch_size: 0
input [ { name: "STEPS" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "DONE" data_type: TYPE_INT32 dims: [ 1 ] } ]
parameters: { key: "step_seconds" value: { string_value: "${stepSeconds}" } }
instance_group [ { kind: KIND_CPU, count: 1 } ]
`;

function slowRepository(stepSeconds: string) {
  const repository = makeRepository({ slow: { config: slowConfig(stepSeconds) } }, []);
  cpSync(path.join(PROJECT_ROOT, 'tests', 'fixtures', 'model_repository', 'slow_steps', '1', 'model.py'),
    path.join(repository.dir, 'slow', '1', 'model.py'));
  return repository;
}

function httpInfer(url: string, steps: number): Promise<Response> {
  return fetch(`${url}/v2/models/slow/infer`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ inputs: [{ name: 'STEPS', datatype: 'INT32', shape: [1], data: [steps] }] }),
  });
}

async function grpcClient(server: ServerProcess) {
  const address = /Started GRPCInferenceService at (\S+)/.exec(server.stdout())?.[1];
  assert.ok(address, 'gRPC address printed');
  const Service = await loadInferenceService();
  const client = new Service(address, credentials.createInsecure()) as any;
  const call = <T>(rpc: string, request: object) => new Promise<T>((resolve, reject) => {
    client[rpc](request, (err: ServiceError | null, response: T) => (err ? reject(err) : resolve(response)));
  });
  const infer = (steps: number) => call<any>('ModelInfer', {
    model_name: 'slow', inputs: [{ name: 'STEPS', datatype: 'INT32', shape: [1], contents: { int_contents: [steps] } }],
  });
  return { client, call, infer };
}

function exited(server: ServerProcess): Promise<number | null> {
  if (server.child.exitCode !== null) return Promise.resolve(server.child.exitCode);
  return new Promise((resolve) => server.child.once('exit', (code) => resolve(code)));
}

test('SIGTERM: readiness 503 at once, new requests UNAVAILABLE, requests in flight finish, exit 0 without errors', async (t) => {
  const repository = slowRepository('1');
  const server = await startServerProcess(['--model-repository', repository.dir, '--log-verbose', '1']);
  const grpc = await grpcClient(server);
  t.after(async () => {
    grpc.client.close();
    await server.stop();
    repository.remove();
  });

  // 1. A runs (2 steps of 1 s) over HTTP; B waits behind it over gRPC
  const running = server.waitForLog(/executing 1 request/);
  const requestA = httpInfer(server.url, 2);
  await running;
  // the channel connects before B is sent, so B is queued before the SIGTERM below
  assert.deepEqual(await grpc.call('ServerReady', {}), { ready: true });
  const requestB = grpc.infer(1);
  assert.equal((await fetch(`${server.url}/v2/health/ready`)).status, 200);

  // 2. SIGTERM: not ready and refusing at once, still live
  const draining = server.waitForLog(/Shutting down \(SIGTERM\)/);
  server.child.kill('SIGTERM');
  await draining;
  assert.equal((await fetch(`${server.url}/v2/health/ready`)).status, 503);
  assert.equal((await fetch(`${server.url}/v2/models/slow/ready`)).status, 503);
  assert.equal((await fetch(`${server.url}/v2/health/live`)).status, 200);
  const refused = await httpInfer(server.url, 1);
  assert.equal(refused.status, 503);
  assert.match((await refused.json() as any).error, /shutting down/);
  await assert.rejects(grpc.infer(1), (err: ServiceError) => err.code === status.UNAVAILABLE && /shutting down/.test(err.details));
  assert.deepEqual(await grpc.call('ServerReady', {}), { ready: false });

  // 3. both requests in flight are answered in full, then the server exits cleanly
  const responseA = await requestA;
  assert.equal(responseA.status, 200);
  assert.deepEqual((await responseA.json() as any).outputs[0].data, [2]);
  assert.equal((await requestB).raw_output_contents[0].readInt32LE(0), 1);
  assert.equal(await exited(server), 0);
  assert.match(server.stdout(), /Server stopped/);
  assert.doesNotMatch(server.stdout() + server.stderr(), /ERROR|Traceback/);
});

test('SIGTERM: a request still running after --exit-timeout-secs is aborted with a clear error and the exit code is 1', async (t) => {
  const repository = slowRepository('3600');
  const server = await startServerProcess(['--model-repository', repository.dir, '--log-verbose', '1', '--exit-timeout-secs', '1']);
  t.after(async () => {
    await server.stop();
    repository.remove();
  });
  const running = server.waitForLog(/executing 1 request/);
  const stuck = httpInfer(server.url, 1);
  await running;
  const startedAt = Date.now();
  server.child.kill('SIGTERM');

  const response = await stuck;
  assert.equal(response.status, 503);
  assert.match((await response.json() as any).error, /shutting down .* still running after the exit timeout \(1 s\)/);
  assert.equal(await exited(server), 1);
  assert.ok(Date.now() - startedAt < 10_000, 'exits soon after the timeout');
  assert.match(server.stdout(), /Exit timeout of 1 s expired with requests in flight/);
});
