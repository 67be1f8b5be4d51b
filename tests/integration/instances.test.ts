import assert from 'node:assert/strict';
import { cpSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { makeRepository, PROJECT_ROOT, startServerProcess, type ServerProcess } from './support/server-process.js';

const SLOW_CONFIG = `name: "slow"
backend: "python"
max_batch_size: 0
input [ { name: "STEPS" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "DONE" data_type: TYPE_INT32 dims: [ 1 ] } ]
parameters: { key: "step_seconds" value: { string_value: "3600" } }
instance_group [ { kind: KIND_CPU, count: 2 } ]
`;

/** The instance label of each "executing" debug line logged since `from` characters into stderr. */
function executions(server: ServerProcess, from: number): string[] {
  return [...server.stderr().slice(from).matchAll(/backend (\S+) \(pid \d+\): executing/g)].map((m) => m[1]);
}

async function until(condition: () => boolean, what: string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

test('count: 2 starts two backend processes; each request goes to the least loaded one, the rest wait for a free one', async (t) => {
  const repository = makeRepository({ slow: { config: SLOW_CONFIG } }, []);
  cpSync(path.join(PROJECT_ROOT, 'tests', 'fixtures', 'model_repository', 'slow_steps', '1', 'model.py'),
    path.join(repository.dir, 'slow', '1', 'model.py'));
  const server = await startServerProcess(['--model-repository', repository.dir, '--log-verbose', '1']);
  t.after(async () => {
    await server.stop();
    repository.remove();
  });
  const infer = (signal: AbortSignal) => fetch(`${server.url}/v2/models/slow/infer`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ inputs: [{ name: 'STEPS', datatype: 'INT32', shape: [1], data: [1] }] }),
    signal,
  }).catch((err: Error) => err);
  const pids = new Set([...server.stderr().matchAll(/loaded .*slow\/1\/model\.py \(pid (\d+)\)/g)].map((m) => m[1]));
  assert.equal(pids.size, 2, 'two backend processes');

  // 1. A and B run at once, one on each instance
  const from = server.stderr().length;
  const [a, b, c] = [new AbortController(), new AbortController(), new AbortController()];
  const requests = [infer(a.signal), infer(b.signal)];
  await until(() => executions(server, from).length === 2, 'two executions');
  assert.deepEqual(executions(server, from).sort(), ['slow_0_0', 'slow_0_1']);

  // 2. C waits: both instances are busy
  requests.push(infer(c.signal));
  await new Promise((resolve) => setTimeout(resolve, 500));
  assert.equal(executions(server, from).length, 2);
  const metricsAddress = /Started Metrics Service at (\S+)/.exec(server.stdout())?.[1];
  const metrics = await (await fetch(`http://${metricsAddress}/metrics`)).text();
  assert.match(metrics, /^nv_inference_pending_request_count\{model="slow",version="1"\} 1$/m, 'the queued request is pending');

  // 3. A's client leaves: its instance takes C
  const first = executions(server, from)[0];
  a.abort();
  await until(() => executions(server, from).length === 3, 'C to run');
  assert.equal(executions(server, from)[2], first);
  b.abort();
  c.abort();
  await Promise.all(requests);
});

test('step-level batching with count: 2: concurrent requests spread over both instances, each batching its own', async (t) => {
  const tinyConfig = readFileSync(path.join(PROJECT_ROOT, 'model_repository', 'tiny_sd', 'config.pbtxt'), 'utf8')
    .replace(/instance_group \[[^\]]*\]/, 'instance_group [ { kind: KIND_CPU, count: 2 } ]');
  const repository = makeRepository({ tiny2: { config: tinyConfig } }, []);
  cpSync(path.join(PROJECT_ROOT, 'model_repository', 'tiny_sd', '1'), path.join(repository.dir, 'tiny2', '1'), { recursive: true, dereference: true });
  const server = await startServerProcess(['--model-repository', repository.dir, '--log-verbose', '1']);
  t.after(async () => {
    await server.stop();
    repository.remove();
  });
  const from = server.stderr().length;
  const generate = (seed: number) => fetch(`${server.url}/v2/models/tiny2/generate`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: 'a fox', steps: 4, seed }),
  });
  const responses = await Promise.all([1, 2, 3, 4].map(generate));
  for (const response of responses) assert.equal(response.status, 200, await response.clone().text());
  // least loaded first: the second request goes to the idle instance, though the first has room
  await until(() => executions(server, from).length === 4, 'the four executions logged');
  assert.deepEqual([...new Set(executions(server, from))].sort(), ['tiny2_0_0', 'tiny2_0_1']);
});
