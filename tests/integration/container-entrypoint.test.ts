import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { makeRepository, PROJECT_ROOT } from './support/server-process.js';

const ENTRYPOINT = path.join(PROJECT_ROOT, 'scripts', 'container-entrypoint.sh');
const API_KEY = 'container-test-key';

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** The image's probe command: its exit code. */
async function probe(route: string, env: NodeJS.ProcessEnv): Promise<number> {
  try {
    await promisify(execFile)(ENTRYPOINT, ['probe', route], { env });
    return 0;
  } catch (err) {
    return (err as { code: number }).code;
  }
}

test('the container entrypoint serves the volumes on every interface with the API key, probes with it, and drains on SIGTERM', async (t) => {
  const repository = makeRepository();
  const engineCache = mkdtempSync(path.join(os.tmpdir(), 'sdserve-container-cache-'));
  const [http, grpc, metrics] = [await freePort(), await freePort(), await freePort()];
  const env = {
    ...process.env,
    SDSERVE_MODEL_REPOSITORY: repository.dir,
    SDSERVE_ENGINE_CACHE: engineCache,
    SDSERVE_HTTP_PORT: String(http),
    SDSERVE_GRPC_PORT: String(grpc),
    SDSERVE_METRICS_PORT: String(metrics),
    SDSERVE_EXIT_TIMEOUT_SECS: '5',
    SDSERVE_API_KEY: API_KEY,
  };
  const child = spawn(ENTRYPOINT, ['serve', '--log-verbose', '1'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => { out += chunk; });
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => { out += chunk; });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  t.after(async () => {
    if (child.exitCode === null) child.kill('SIGKILL');
    repository.remove();
    rmSync(engineCache, { recursive: true, force: true });
  });

  // 1. it starts on every interface, at the ports of its environment
  const deadline = Date.now() + 240_000;
  while (!out.includes('Started Metrics Service')) { // the last of the three lines
    assert.ok(Date.now() < deadline && child.exitCode === null, `server did not start:\n${out}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  assert.match(out, new RegExp(`Started HTTPService at 0\\.0\\.0\\.0:${http}`));
  assert.match(out, new RegExp(`Started GRPCInferenceService at 0\\.0\\.0\\.0:${grpc}`));
  assert.match(out, new RegExp(`Started Metrics Service at 0\\.0\\.0\\.0:${metrics}`));

  // 2. the key is required; the probe command sends it
  const url = `http://127.0.0.1:${http}`;
  assert.equal((await fetch(`${url}/v2/health/live`)).status, 401);
  assert.equal(await probe('/v2/health/live', env), 0);
  assert.equal(await probe('/v2/models/tiny_sd/ready', env), 0);
  assert.equal(await probe('/v2/models/no_such_model/ready', env), 1);
  assert.equal(await probe('/v2/health/live', { ...env, SDSERVE_API_KEY: 'wrong-key-1234' }), 1);
  const response = await fetch(`${url}/v2/models/tiny_sd/generate`, {
    method: 'POST',
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: 'a fox', steps: 2 }),
  });
  assert.equal(response.status, 200, await response.clone().text());

  // 3. SIGTERM reaches the server (the shell exec'd it): it drains and exits 0
  child.kill('SIGTERM');
  assert.equal(await exited, 0, out);
  assert.match(out, /Shutting down \(SIGTERM\)/);
  assert.match(out, /Server stopped/);
});
