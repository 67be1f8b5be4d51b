/**
 * What the server says of itself: `--log-format json` puts every line in JSON (the model table
 * with its rows as data, the start lines, the access lines of `--log-verbose 1`), a model whose
 * weights are missing says why on every front end, `GET /` sends a browser to the playground, a
 * normal stop logs no error, and a `--load-model` name that is not in the repository lists the
 * names that are (and stops the server under `--exit-on-error`).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { cpSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import { makeRepository, PROJECT_ROOT, SDSERVE_BIN, startServerProcess } from './support/server-process.js';

const ADD_SUB = path.join(PROJECT_ROOT, 'tests', 'fixtures', 'model_repository', 'add_sub');
const NO_WEIGHTS_CONFIG = readFileSync(path.join(PROJECT_ROOT, 'model_repository', 'stable_diffusion_1_5', 'config.pbtxt'), 'utf8');

interface LogLine { level: number; msg: string; models?: Array<{ name: string; state: string; reason: string }> }

function withAddSub(extra: Parameters<typeof makeRepository>[0] = {}): ReturnType<typeof makeRepository> {
  const repository = makeRepository(extra, []);
  cpSync(ADD_SUB, path.join(repository.dir, 'add_sub'), { recursive: true });
  return repository;
}

test('with --log-format json every line is JSON; access lines, the missing weights\' reason, GET /, and a quiet stop', async (t) => {
  const repository = withAddSub({ no_weights: { config: NO_WEIGHTS_CONFIG } });
  t.after(() => repository.remove());
  const server = await startServerProcess(['--model-repository', repository.dir, '--log-format', 'json', '--log-verbose', '1']);
  t.after(() => server.stop());

  // 1. the model table, as a line and as data
  const lines = () => (server.stdout() + server.stderr()).split('\n').filter((line) => line.trim() !== '')
    .map((line) => JSON.parse(line) as LogLine);
  const table = lines().find((line) => line.models !== undefined);
  assert.ok(table, 'no model table line');
  assert.match(table.msg, /\| add_sub +\| 1 +\| READY +\|/);
  const rows = Object.fromEntries(table.models!.map((row) => [row.name, row]));
  assert.equal(rows.add_sub.state, 'READY');
  assert.equal(rows.no_weights.state, 'UNAVAILABLE');
  assert.match(rows.no_weights.reason, /weights not found at /);
  assert.ok(lines().some((line) => line.msg.startsWith('Started GRPCInferenceService at ')));
  const started = lines().length;

  // 2. one access line per request
  const infer = await fetch(`${server.url}/v2/models/add_sub/infer`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      id: 'logged-1',
      inputs: ['INPUT0', 'INPUT1'].map((name) => ({ name, datatype: 'FP32', shape: [4], data: [1, 2, 3, 4] })),
    }),
  });
  assert.equal(infer.status, 200);
  const access = await until(() => lines().find((line) => line.msg.startsWith('request logged-1 ')));
  assert.match(access.msg,
    /^request logged-1 \(sdserve-\d+\) model add_sub version 1: OK, queue \d+\.\d ms, compute \d+\.\d ms$/);

  // 3. the reason a model is not ready, on the OpenAI route too
  const openai = await fetch(`${server.url}/v1/images/generations`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'no_weights', prompt: 'a fox' }),
  });
  const { error } = await openai.json() as { error: { message: string } };
  assert.equal(openai.status, 404);
  assert.match(error.message, /weights not found at /);

  // 4. a browser at the root goes to the playground
  const root = await fetch(`${server.url}/`, { redirect: 'manual' });
  assert.equal(root.status, 302);
  assert.equal(root.headers.get('location'), '/playground');

  // 5. a normal stop says nothing at ERROR level
  await server.stop();
  const after = lines().slice(started);
  assert.deepEqual(after.filter((line) => line.level >= 50).map((line) => line.msg), []);
  assert.equal(server.child.exitCode, 0);
});

test('a --load-model name that is not in the repository lists the models there; --exit-on-error stops the server', async (t) => {
  const repository = withAddSub();
  t.after(() => repository.remove());
  const child = spawn(process.execPath, [SDSERVE_BIN, 'serve', '--model-repository', repository.dir, '--http-port', '0',
    '--grpc-port', '0', '--metrics-port', '0', '--model-control-mode', 'explicit', '--load-model', 'add_sib', '--exit-on-error'],
  { cwd: PROJECT_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => { output += chunk; });
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => { output += chunk; });
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));

  assert.notEqual(code, 0, output);
  assert.match(output, /failed to load 'add_sib': no model of that name in the repository; models there: add_sub/);
  assert.doesNotMatch(output, /Started HTTPService/);
});

async function until<T>(find: () => T | undefined, timeoutMs = 30_000): Promise<T> {
  for (const deadline = Date.now() + timeoutMs; Date.now() < deadline; await new Promise((resolve) => setTimeout(resolve, 50))) {
    const found = find();
    if (found !== undefined) return found;
  }
  throw new Error(`not found within ${timeoutMs} ms`);
}
