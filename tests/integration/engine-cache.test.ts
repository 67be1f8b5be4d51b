import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, lstatSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { PROJECT_ROOT, startServerProcess, type Launcher } from './support/server-process.js';

/** Every entry under `dir` with its size and modification time. */
function snapshot(dir: string): string[] {
  const rows: string[] = [];
  const walk = (folder: string) => {
    for (const name of readdirSync(folder).sort()) {
      const full = path.join(folder, name);
      const stat = lstatSync(full);
      rows.push(`${path.relative(dir, full)} ${stat.size} ${stat.mtimeMs}`);
      if (stat.isDirectory()) walk(full);
    }
  };
  walk(dir);
  return rows;
}

/**
 * Runs the server in its own mount namespace with `dir` bind-mounted read-only (as a Kubernetes
 * volume with readOnly: true); undefined where this host does not allow it (no unshare, no
 * privilege), and the test then relies on the repository's snapshot alone.
 */
function readOnlyLauncher(dir: string): Launcher | undefined {
  const script = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"';
  const probe = spawnSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c', `${script}`, dir, 'sh', '-c', 'touch "$0/.w" 2>/dev/null; test ! -e "$0/.w"', dir]);
  if (probe.status !== 0) return undefined;
  return (command, args) => ({ command: 'unshare', args: ['-m', '--propagation', 'private', 'sh', '-c', script, dir, command, ...args] });
}

test('a read-only model repository serves; engine caches go to --engine-cache-dir and nothing is written into the repository', async (t) => {
  const repository = mkdtempSync(path.join(os.tmpdir(), 'sdserve-ro-repo-'));
  const cacheDir = mkdtempSync(path.join(os.tmpdir(), 'sdserve-engine-cache-'));
  cpSync(path.join(PROJECT_ROOT, 'model_repository', 'tiny_sd'), path.join(repository, 'tiny_sd'), { recursive: true, dereference: true });
  cpSync(path.join(PROJECT_ROOT, 'tests', 'fixtures', 'model_repository', 'cache_probe'), path.join(repository, 'cache_probe'), { recursive: true });
  const before = snapshot(repository);
  const launcher = readOnlyLauncher(repository);
  t.diagnostic(launcher ? 'repository mounted read-only' : 'no mount namespace here: checking that nothing is written');

  const server = await startServerProcess(['--model-repository', repository, '--engine-cache-dir', cacheDir], 240_000, launcher);
  t.after(async () => {
    await server.stop();
    rmSync(repository, { recursive: true, force: true });
    rmSync(cacheDir, { recursive: true, force: true });
  });

  // 1. both models load and answer
  const response = await fetch(`${server.url}/v2/models/tiny_sd/infer`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ inputs: [{ name: 'prompt', datatype: 'BYTES', shape: [1, 1], data: ['a fox'] }], parameters: { steps: 2, seed: 1 } }),
  });
  assert.equal(response.status, 200, await response.clone().text());
  assert.deepEqual((await response.json() as any).outputs[0].shape, [1, 128, 128, 3]);
  assert.equal((await fetch(`${server.url}/v2/models/cache_probe/ready`)).status, 200);

  // 2. the engine folder of each version is <cache>/<model>/<version>/; the repository is as it was
  assert.equal(readFileSync(path.join(cacheDir, 'cache_probe', '1', 'engine.json'), 'utf8'), '{"probe": true}\n');
  await server.stop();
  assert.deepEqual(snapshot(repository), before);
});
