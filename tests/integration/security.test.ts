import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { makeRepository, startServerProcess, type ServerProcess } from './support/server-process.js';

const KEY = 'sk-integration-key';

/** Issue 13 #1: any web page the user opened could load a model with a text/plain POST. */
describe('sdserve serve: a cross-site load request', () => {
  let server: ServerProcess;
  const repository = makeRepository();

  before(async () => {
    server = await startServerProcess(['--model-repository', repository.dir, '--model-control-mode', 'explicit', '--api-key', KEY]);
  });
  after(async () => {
    await server?.stop();
    repository.remove();
  });

  const load = (headers: Record<string, string>) => fetch(`${server.url}/v2/repository/models/tiny_sd/load`, {
    method: 'POST', headers, body: '{}',
  });

  test('is refused: foreign Origin 403, text/plain 415, no key 401; the model stays unloaded', async () => {
    const crossSite = await load({ 'content-type': 'text/plain;charset=UTF-8', origin: 'http://attacker.example' });
    assert.equal(crossSite.status, 403);
    const plain = await load({ 'content-type': 'text/plain;charset=UTF-8', authorization: `Bearer ${KEY}` });
    assert.equal(plain.status, 415);
    const noKey = await load({ 'content-type': 'application/json' });
    assert.equal(noKey.status, 401);
    const index = await fetch(`${server.url}/v2/repository/index`, { method: 'POST', headers: { authorization: `Bearer ${KEY}` } });
    assert.equal(index.status, 200);
    const models = await index.json() as Array<{ name: string; state?: string }>;
    assert.notEqual(models.find((m) => m.name === 'tiny_sd')?.state, 'READY');
  });

  test('says at start that it listens on this host only', () => {
    assert.match(server.stdout(), /Listening on this host only \(loopback\)/);
    assert.doesNotMatch(server.stdout(), /WARNING/);
  });
});
