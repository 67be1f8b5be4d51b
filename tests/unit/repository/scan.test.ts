import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { resolveVersions, scanRepository, type VersionPolicy } from '../../../src/repository/index.js';

async function tempRepository(t: TestContext): Promise<string> {
  const repo = await mkdtemp(join(tmpdir(), 'sdserve-scan-'));
  t.after(() => rm(repo, { recursive: true, force: true }));
  return repo;
}

async function addModel(repo: string, name: string, config: string | undefined, folders: string[]): Promise<void> {
  await mkdir(join(repo, name), { recursive: true });
  if (config !== undefined) await writeFile(join(repo, name, 'config.pbtxt'), config);
  for (const folder of folders) await mkdir(join(repo, name, folder));
}

test('scans good, broken and config-less models without one stopping the others', async (t) => {
  const repo = await tempRepository(t);
  await addModel(repo, 'good', 'backend: "diffusion"\nmax_batch_size: 1\n', ['10', '2', '1', '0', '01', 'notes']);
  await addModel(repo, 'broken', 'backend: "diffusion"\ninput { name: "p"\n', ['1']);
  await addModel(repo, 'empty', undefined, ['1']);
  await addModel(repo, '.hidden', 'backend: "x"', ['1']);
  await writeFile(join(repo, 'README.md'), 'not a model');
  await writeFile(join(repo, 'good', '3'), 'a file, not a version folder');

  const entries = await scanRepository(repo);

  assert.deepEqual(entries.map((e) => e.name), ['broken', 'empty', 'good']);
  const [broken, empty, good] = entries;

  assert.equal(good.error, undefined);
  assert.equal(good.dir, join(repo, 'good'));
  assert.equal(good.configFile, join(repo, 'good', 'config.pbtxt'));
  assert.deepEqual(good.versions, [1, 2, 10]);
  assert.equal(good.config?.name, 'good');
  assert.equal(good.config?.max_batch_size, 1);

  assert.equal(broken.config, undefined);
  assert.equal(broken.error, `${join(repo, 'broken', 'config.pbtxt')}:3:1: expected '}' to close the '{' at 2:7, found end of input`);
  assert.deepEqual(broken.versions, [1]);

  assert.equal(empty.config, undefined);
  assert.equal(empty.error, `no config.pbtxt in ${join(repo, 'empty')}`);
  assert.deepEqual(empty.versions, [1]);
});

test('reports a config that fails validation as that model\'s error', async (t) => {
  const repo = await tempRepository(t);
  await addModel(repo, 'renamed', 'name: "something_else"', []);
  const [entry] = await scanRepository(repo);
  assert.match(entry.error ?? '', /config\.pbtxt:1:1: name: "something_else" does not match the model directory name "renamed"$/);
  assert.deepEqual(entry.versions, []);
});

test('returns no models for an empty repository', async (t) => {
  assert.deepEqual(await scanRepository(await tempRepository(t)), []);
});

test('rejects a repository path that does not exist', async (t) => {
  const missing = join(await tempRepository(t), 'missing');
  await assert.rejects(scanRepository(missing), {
    name: 'SdserveError', code: 'SDS_ERR_CONFIG', message: new RegExp(`^model repository ${missing} cannot be read`),
  });
});

test('resolves versions for each version policy', () => {
  const resolve = (version_policy: VersionPolicy, available: number[]) => resolveVersions({ version_policy }, available);
  assert.deepEqual(resolve({ latest: { num_versions: 1 } }, [3, 1, 2]), [3]);
  assert.deepEqual(resolve({ latest: { num_versions: 2 } }, [3, 1, 10]), [3, 10]);
  assert.deepEqual(resolve({ latest: { num_versions: 5 } }, [2, 1]), [1, 2]);
  assert.deepEqual(resolve({ all: {} }, [3, 1, 2]), [1, 2, 3]);
  assert.deepEqual(resolve({ specific: { versions: [1, 3, 7] } }, [1, 2, 3]), [1, 3]);
  assert.deepEqual(resolve({ latest: { num_versions: 1 } }, []), []);
});
