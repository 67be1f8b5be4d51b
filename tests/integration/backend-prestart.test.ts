import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { makeRepository, startServerProcess, type ServerProcess } from './support/server-process.js';

/** The first line of the server's output so far, or from now on, that matches `pattern`. */
async function logLine(server: ServerProcess, pattern: RegExp, timeoutMs = 300_000): Promise<string> {
  const waiting = server.waitForLog(pattern, timeoutMs);
  const seen = `${server.stdout()}\n${server.stderr()}`.split('\n').find((line) => pattern.test(line));
  if (seen !== undefined) {
    waiting.catch(() => undefined);
    return seen;
  }
  return waiting;
}

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function post(server: ServerProcess, route: string, body?: object): Promise<Response> {
  return fetch(`${server.url}${route}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    ...(body !== undefined && { body: JSON.stringify(body) }),
  });
}

test('with --backend-prestart a load takes a backend started ahead, its imports done, and a replacement starts for the next load', async (t) => {
  const repository = makeRepository();
  const cacheDir = mkdtempSync(path.join(os.tmpdir(), 'sdserve-prestart-cache-'));
  const server = await startServerProcess(['--model-repository', repository.dir, '--model-control-mode', 'explicit',
    '--engine-cache-dir', cacheDir, '--backend-prestart']);
  t.after(async () => {
    await server.stop();
    repository.remove();
    rmSync(cacheDir, { recursive: true, force: true });
  });

  // 1. the server starts a spare before any load; it imports the backend's code while it waits
  const firstSpare = /\[spare_1\] started ahead of its load \(pid (\d+)\)/.exec(await logLine(server, /\[spare_1\] started ahead/));
  assert.ok(firstSpare);
  await logLine(server, /\[spare_1\] .*pre-imported sdserve_backend\.backends\.diffusion\.model, torch\._inductor\.compile_fx in/);

  // 2. the load takes it: the model runs in the spare's process
  const load = await post(server, '/v2/repository/models/tiny_sd/load');
  assert.equal(load.status, 200, await load.clone().text());
  await logLine(server, new RegExp(`\\[spare_1\\] becomes tiny_sd_0_0 \\(pid ${firstSpare[1]}\\)`), 5_000);
  await logLine(server, new RegExp(`\\[tiny_sd_0_0\\] loaded .*model\\.py \\(pid ${firstSpare[1]}\\)`), 5_000);
  const infer = await post(server, '/v2/models/tiny_sd/infer', {
    inputs: [{ name: 'prompt', datatype: 'BYTES', shape: [1, 1], data: ['a fox'] }], parameters: { steps: 2, seed: 1 },
  });
  assert.equal(infer.status, 200, await infer.clone().text());

  // 3. a replacement started after the load serves the next load of the model
  const secondSpare = /\[spare_2\] started ahead of its load \(pid (\d+)\)/.exec(await logLine(server, /\[spare_2\] started ahead/));
  assert.ok(secondSpare);
  await logLine(server, /\[spare_2\] .*pre-imported sdserve_backend/);
  assert.equal((await post(server, '/v2/repository/models/tiny_sd/unload')).status, 200);
  const reload = await post(server, '/v2/repository/models/tiny_sd/load');
  assert.equal(reload.status, 200, await reload.clone().text());
  await logLine(server, new RegExp(`\\[spare_2\\] becomes tiny_sd_0_0 \\(pid ${secondSpare[1]}\\)`), 5_000);

  // 4. stopping the server stops every backend, spares included
  const spareThree = /\[spare_3\] started ahead of its load \(pid (\d+)\)/.exec(await logLine(server, /\[spare_3\] started ahead/));
  assert.ok(spareThree);
  await server.stop();
  for (const pid of [firstSpare[1], secondSpare[1], spareThree[1]]) assert.equal(isRunning(Number(pid)), false, `pid ${pid}`);
});
