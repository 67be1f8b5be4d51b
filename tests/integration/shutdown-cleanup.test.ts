import assert from 'node:assert/strict';
import { cpSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { PROJECT_ROOT, startServerProcess } from './support/server-process.js';

const FIXTURES = path.join(PROJECT_ROOT, 'tests', 'fixtures', 'model_repository');

test('a server that shuts down leaves nothing in the temporary folder', async (t) => {
  const work = mkdtempSync(path.join(os.tmpdir(), 'sdserve-cleanup-'));
  const temporary = path.join(work, 'tmp');
  const repository = path.join(work, 'repository');
  cpSync(path.join(FIXTURES, 'add_sub'), path.join(repository, 'add_sub'), { recursive: true });
  cpSync(path.join(FIXTURES, 'initialize_fails'), path.join(repository, 'initialize_fails'), { recursive: true });
  mkdirSync(temporary);
  t.after(() => rmSync(work, { recursive: true, force: true }));

  // The server and its backends take their temporary folder from TMPDIR.
  const saved = process.env.TMPDIR;
  process.env.TMPDIR = temporary;
  const server = await startServerProcess(['--model-repository', repository]).finally(() => {
    if (saved === undefined) delete process.env.TMPDIR; else process.env.TMPDIR = saved;
  });
  const response = await fetch(`${server.url}/v2/models/add_sub/infer`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ inputs: [
      { name: 'INPUT0', datatype: 'FP32', shape: [4], data: [1, 2, 3, 4] },
      { name: 'INPUT1', datatype: 'FP32', shape: [4], data: [1, 1, 1, 1] },
    ] }),
  });
  assert.equal(response.status, 200);
  await server.stop();
  assert.deepEqual(readdirSync(temporary), []);
});
