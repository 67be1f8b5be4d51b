import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { PROJECT_ROOT, startServerProcess, type ServerProcess } from './support/server-process.js';

const FIXTURES = path.join(PROJECT_ROOT, 'tests', 'fixtures', 'model_repository');

function infer(url: string, model: string, input: { name: string; datatype: string; data: number[] }): Promise<Response> {
  return fetch(`${url}/v2/models/${model}/infer`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ inputs: [{ ...input, shape: [1] }] }),
  });
}

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs = 60_000): Promise<number> {
  const started = Date.now();
  while (Date.now() - started < timeoutMs) {
    if (await check()) return Date.now() - started;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`${what}: not within ${timeoutMs} ms`);
}

describe('a request runs no longer than its model\'s execution deadline', () => {
  let server: ServerProcess;
  let repository: string;

  before(async () => {
    repository = mkdtempSync(path.join(os.tmpdir(), 'sdserve-deadline-'));
    cpSync(path.join(FIXTURES, 'stuck_step'), path.join(repository, 'stuck_step'), { recursive: true });
    cpSync(path.join(FIXTURES, 'slow_steps'), path.join(repository, 'slow_steps'), { recursive: true });
    const slowConfig = path.join(repository, 'slow_steps', 'config.pbtxt');
    writeFileSync(slowConfig, `${readFileSync(slowConfig, 'utf8')}\nparameters: { key: "max_execution_secs" value: { string_value: "1" } }\n`);
    server = await startServerProcess(['--model-repository', repository]);
  });
  after(async () => {
    await server?.stop();
    rmSync(repository, { recursive: true, force: true });
  });

  test('a request past the deadline is cancelled between steps and answered 504', async () => {
    const response = await infer(server.url, 'slow_steps', { name: 'STEPS', datatype: 'INT32', data: [5] });
    assert.equal(response.status, 504);
    const { error } = await response.json() as any;
    assert.match(error, /ran past the model's execution deadline of 1 s \(config parameter max_execution_secs\) and was cancelled$/);
    assert.equal((await fetch(`${server.url}/v2/models/slow_steps/ready`)).status, 200);
  });

  test('a backend stuck inside one step turns the model not ready, then is killed and restarted', async () => {
    const stuck = infer(server.url, 'stuck_step', { name: 'SECONDS', datatype: 'FP32', data: [3600] });
    await waitFor('the model turns not ready', async () => (await fetch(`${server.url}/v2/models/stuck_step/ready`)).status !== 200);
    assert.notEqual((await fetch(`${server.url}/v2/health/ready`)).status, 200, 'the server is not ready either');
    const response = await stuck;
    assert.equal(response.status, 504);
    assert.match((await response.json() as any).error,
      /execution deadline of 2 s .* it did not stop within 2 s more, so its backend was restarted/);
    await waitFor('the model is ready again', async () => (await fetch(`${server.url}/v2/models/stuck_step/ready`)).status === 200);
    const quick = await infer(server.url, 'stuck_step', { name: 'SECONDS', datatype: 'FP32', data: [0] });
    assert.equal(quick.status, 200, await quick.clone().text());
    assert.equal((await fetch(`${server.url}/v2/health/ready`)).status, 200);
  });
});
