/**
 * A diffusion model's config.pbtxt that sets a parameter the backend does not know fails to load
 * with an error naming the parameter where it is set (file:line:column), as the parser's own
 * errors do, and with the name it was probably meant to be.
 */
import assert from 'node:assert/strict';
import { cpSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import { makeRepository, PROJECT_ROOT, startServerProcess } from './support/server-process.js';

test('an unknown config parameter is a load error at its file:line:column', async (t) => {
  const tiny = path.join(PROJECT_ROOT, 'model_repository', 'tiny_sd');
  const config = readFileSync(path.join(tiny, 'config.pbtxt'), 'utf8')
    .replace('key: "steps"', 'key: "stepz"');
  const line = config.split('\n').findIndex((text) => text.includes('key: "stepz"')) + 1;
  const column = config.split('\n')[line - 1].indexOf('"stepz"') + 1;
  const repository = makeRepository({ typo: { config } }, []);
  cpSync(path.join(tiny, '1'), path.join(repository.dir, 'typo', '1'), { recursive: true, dereference: true });
  const server = await startServerProcess(['--model-repository', repository.dir, '--model-control-mode', 'explicit']);
  t.after(async () => {
    await server.stop();
    repository.remove();
  });

  const response = await fetch(`${server.url}/v2/repository/models/typo/load`, { method: 'POST' });
  const { error } = await response.json() as { error: string };

  assert.equal(response.status, 400, 'the config is the caller\'s to fix');
  const file = path.join(repository.dir, 'typo', 'config.pbtxt');
  assert.match(error, new RegExp(`${escape(file)}:${line}:${column}: parameters: .*config parameter 'stepz' is not known \\(did you mean 'steps'\\?\\)`));
  const index = await (await fetch(`${server.url}/v2/repository/index`, { method: 'POST' })).json() as Array<{ name: string; reason: string }>;
  assert.match(index.find((row) => row.name === 'typo')?.reason ?? '', new RegExp(`:${line}:${column}: parameters: `));
});

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
