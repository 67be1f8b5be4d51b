import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ModelInstance } from '../../../src/core/model-instance.js';
import type { InferRequest } from '../../../src/core/types.js';
import { startOptions, TIMEOUT_MS } from './start-options.js';

function slowRequest(steps: number): InferRequest {
  const data = Buffer.alloc(4);
  data.writeInt32LE(steps);
  return { id: 'stuck', model_name: 'slow_steps', inputs: [{ name: 'STEPS', datatype: 'INT32', shape: [1], data }], parameters: {} };
}

test('a backend that stops answering health probes is killed, fails its request clearly, and comes back', { timeout: TIMEOUT_MS }, async (t) => {
  const quiet = { info: () => {}, warn: () => {}, error: () => {} };
  const options = startOptions('slow_steps', {
    name: 'slow_steps', backend: 'python', output: [{ name: 'DONE', data_type: 'TYPE_INT32', dims: [1] }],
    parameters: {},
  }, quiet);
  const logged: string[] = [];
  const record = (message: string) => { logged.push(message); };
  const logger = { info: record, warn: record, error: record, debug: record };
  let available = 0;
  const instance = new ModelInstance('slow_steps_0', options, logger, () => { available += 1; },
    { intervalMs: 100, timeoutMs: 300, misses: 2 });
  await instance.start();
  t.after(() => instance.stop(1000));
  const firstPid = instance.pid;
  assert.ok(firstPid);

  const inFlight = instance.execute([slowRequest(1000)]);
  process.kill(firstPid, 'SIGSTOP'); // frozen: alive, but answers nothing
  await assert.rejects(inFlight, /exited \(SIGKILL\) while running this request/);
  assert.ok(logged.some((line) => /slow_steps_0 \(pid \d+\) missed 2 health probes; killing it/.test(line)), logged.join('\n'));

  const deadline = Date.now() + TIMEOUT_MS;
  while (available === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(available, 1, 'restarted');
  assert.notEqual(instance.pid, firstPid);
  assert.equal(instance.isAvailable, true);
});
