import assert from 'node:assert/strict';
import { cpSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { makeRepository, PROJECT_ROOT, startServerProcess } from './support/server-process.js';

const QUEUED_CONFIG = `name: "queued"
backend: "python"
max_batch_size: 1
input [ { name: "STEPS" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "DONE" data_type: TYPE_INT32 dims: [ 1 ] } ]
parameters: { key: "step_seconds" value: { string_value: "3600" } }
dynamic_batching {
  default_queue_policy { max_queue_size: 1 allow_timeout_override: true timeout_action: REJECT }
}
instance_group [ { kind: KIND_CPU, count: 1 } ]
`;

function infer(url: string, steps: number, parameters: Record<string, unknown> = {}, signal?: AbortSignal) {
  return fetch(`${url}/v2/models/queued/infer`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ inputs: [{ name: 'STEPS', datatype: 'INT32', shape: [1, 1], data: [steps] }], parameters }),
    signal,
  });
}

test('queue size limit, queue timeout and client cancellation follow the model\'s queue policy', async (t) => {
  const repository = makeRepository({ queued: { config: QUEUED_CONFIG } }, []);
  cpSync(path.join(PROJECT_ROOT, 'tests', 'fixtures', 'model_repository', 'slow_steps', '1', 'model.py'),
    path.join(repository.dir, 'queued', '1', 'model.py'));
  const server = await startServerProcess(['--model-repository', repository.dir, '--log-verbose', '1']);
  t.after(async () => {
    await server.stop();
    repository.remove();
  });

  // 1. A occupies the only instance until it is cancelled
  const running = server.waitForLog(/executing 1 request/);
  const abortA = new AbortController();
  const requestA = infer(server.url, 1, {}, abortA.signal).catch((err: Error) => err);
  await running;

  // 2. B waits in the queue past its own timeout and is rejected
  const timedOut = await infer(server.url, 1, { timeout: 200_000 });
  assert.equal(timedOut.status, 504);
  assert.match((await timedOut.json() as any).error, /Request timeout expired/);

  // 3. C takes the one queue slot, so D is turned away
  const abortC = new AbortController();
  const requestC = infer(server.url, 1, {}, abortC.signal).catch((err: Error) => err);
  let rejected: Response | undefined;
  for (let attempt = 0; attempt < 100 && rejected?.status !== 503; attempt += 1) {
    rejected = await infer(server.url, 1, { timeout: 100_000 });
  }
  assert.equal(rejected?.status, 503);
  assert.match((await rejected!.json() as any).error, /Exceeds maximum queue size of 1/);

  // 4. C's client goes away: its slot frees up, so a later request queues (and times out) instead
  abortC.abort();
  assert.ok(await requestC instanceof Error);
  let queuedAgain: Response | undefined;
  for (let attempt = 0; attempt < 100 && queuedAgain?.status !== 504; attempt += 1) {
    queuedAgain = await infer(server.url, 1, { timeout: 100_000 });
  }
  assert.equal(queuedAgain?.status, 504);

  // 5. A's client goes away: the backend stops it, and the instance serves the next request
  abortA.abort();
  assert.ok(await requestA instanceof Error);
  const next = await infer(server.url, 0);
  assert.equal(next.status, 200, await next.clone().text());
  assert.deepEqual((await next.json() as any).outputs[0].data, [0]);
});
