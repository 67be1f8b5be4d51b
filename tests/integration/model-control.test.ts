import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { PROJECT_ROOT, startServerProcess } from './support/server-process.js';

const ADD_SUB = path.join(PROJECT_ROOT, 'tests', 'fixtures', 'model_repository', 'add_sub');

function addSubRequest(): RequestInit {
  return {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      inputs: [
        { name: 'INPUT0', datatype: 'FP32', shape: [4], data: [1, 2, 3, 4] },
        { name: 'INPUT1', datatype: 'FP32', shape: [4], data: [1, 1, 1, 1] },
      ],
    }),
  };
}

test('poll mode loads added models, reloads changed ones and unloads removed ones', async (t) => {
  const repository = mkdtempSync(path.join(os.tmpdir(), 'sdserve-poll-'));
  cpSync(ADD_SUB, path.join(repository, 'first'), { recursive: true });
  const renameModel = (dir: string) => {
    const config = path.join(repository, dir, 'config.pbtxt');
    writeFileSync(config, readFileSync(config, 'utf8').replace('name: "add_sub"', `name: "${dir}"`));
  };
  renameModel('first');
  const server = await startServerProcess(['--model-repository', repository, '--model-control-mode', 'poll',
    '--repository-poll-secs', '1']);
  t.after(async () => {
    await server.stop();
    rmSync(repository, { recursive: true, force: true });
  });
  assert.match(server.stdout(), /^\| first +\| 1 +\| READY +\|$/m);

  // 1. a new model appears
  const loaded = server.waitForLog(/repository poll: 'second' is ready/);
  cpSync(ADD_SUB, path.join(repository, 'second'), { recursive: true });
  renameModel('second');
  await loaded;
  const sum = await (await fetch(`${server.url}/v2/models/second/infer`, addSubRequest())).json() as any;
  assert.deepEqual(sum.outputs[0].data, [2, 3, 4, 5]);

  // 2. a changed model is reloaded
  const reloaded = server.waitForLog(/repository poll: 'second' is ready/);
  const secondConfig = path.join(repository, 'second', 'config.pbtxt');
  writeFileSync(secondConfig, readFileSync(secondConfig, 'utf8').replace('count: 1', 'count: 2'));
  await reloaded;
  const config = await (await fetch(`${server.url}/v2/models/second/config`)).json() as any;
  assert.equal(config.instance_group[0].count, 2);

  // 3. a removed model goes away
  const unloaded = server.waitForLog(/repository poll: unloading removed model 'first'/);
  rmSync(path.join(repository, 'first'), { recursive: true, force: true });
  await unloaded;
  const gone = await fetch(`${server.url}/v2/models/first/infer`, addSubRequest());
  assert.equal(gone.status, 400);

  // 4. the repository API is closed outside explicit mode
  const refused = await fetch(`${server.url}/v2/repository/models/second/unload`, { method: 'POST' });
  assert.equal(refused.status, 503);
  assert.match((await refused.json() as any).error, /not allowed in model control mode 'poll'/);
});

test('explicit mode loads and unloads through the repository API, with a config override', async (t) => {
  const repository = mkdtempSync(path.join(os.tmpdir(), 'sdserve-explicit-'));
  cpSync(ADD_SUB, path.join(repository, 'add_sub'), { recursive: true });
  const server = await startServerProcess(['--model-repository', repository, '--model-control-mode', 'explicit']);
  t.after(async () => {
    await server.stop();
    rmSync(repository, { recursive: true, force: true });
  });
  const index = await (await fetch(`${server.url}/v2/repository/index`, { method: 'POST' })).json() as any[];
  assert.deepEqual(index.map((row) => [row.name, row.state]), [['add_sub', 'UNAVAILABLE']]);
  assert.equal((await fetch(`${server.url}/v2/models/add_sub/ready`)).status, 400);

  const load = await fetch(`${server.url}/v2/repository/models/add_sub/load`, { method: 'POST' });
  assert.equal(load.status, 200, await load.clone().text());
  assert.equal((await fetch(`${server.url}/v2/models/add_sub/ready`)).status, 200);
  assert.equal((await fetch(`${server.url}/v2/models/add_sub/infer`, addSubRequest())).status, 200);

  const config = await (await fetch(`${server.url}/v2/models/add_sub/config`)).json() as any;
  config.instance_group = [{ kind: 'KIND_CPU', count: 2 }];
  const reload = await fetch(`${server.url}/v2/repository/models/add_sub/load`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ parameters: { config: JSON.stringify(config) } }),
  });
  assert.equal(reload.status, 200, await reload.clone().text());
  const reloaded = await (await fetch(`${server.url}/v2/models/add_sub/config`)).json() as any;
  assert.equal(reloaded.instance_group[0].count, 2);

  const badOverride = await fetch(`${server.url}/v2/repository/models/add_sub/load`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ parameters: { config: '{"max_batch_size": "lots"}' } }),
  });
  assert.equal(badOverride.status, 400);
  assert.match((await badOverride.json() as any).error, /max_batch_size/);
  assert.equal((await fetch(`${server.url}/v2/models/add_sub/ready`)).status, 200, 'a failed reload keeps the served version');

  const [loadA, loadB, unloadC] = await Promise.all([
    fetch(`${server.url}/v2/repository/models/add_sub/load`, { method: 'POST' }),
    fetch(`${server.url}/v2/repository/models/add_sub/load`, { method: 'POST' }),
    fetch(`${server.url}/v2/repository/models/add_sub/unload`, { method: 'POST' }),
  ]);
  assert.deepEqual([loadA.status, loadB.status, unloadC.status], [200, 200, 200]);
  assert.equal((await fetch(`${server.url}/v2/models/add_sub/ready`)).status, 400, 'the unload, asked last, wins');
  await fetch(`${server.url}/v2/repository/models/add_sub/load`, { method: 'POST' });

  const unload = await fetch(`${server.url}/v2/repository/models/add_sub/unload`, { method: 'POST' });
  assert.equal(unload.status, 200);
  assert.equal((await fetch(`${server.url}/v2/models/add_sub/ready`)).status, 400);
});

test('a reload serves the old version until the new one is ready, and a failed reload keeps it serving', async (t) => {
  const repository = mkdtempSync(path.join(os.tmpdir(), 'sdserve-reload-'));
  cpSync(ADD_SUB, path.join(repository, 'add_sub'), { recursive: true });
  const server = await startServerProcess(['--model-repository', repository, '--model-control-mode', 'explicit',
    '--load-model', 'add_sub']);
  t.after(async () => {
    await server.stop();
    rmSync(repository, { recursive: true, force: true });
  });
  const config = await (await fetch(`${server.url}/v2/models/add_sub/config`)).json() as any;
  const reload = (override: object) => fetch(`${server.url}/v2/repository/models/add_sub/load`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ parameters: { config: JSON.stringify(override) } }),
  });

  // 1. traffic all through a successful reload: every request answered
  const statuses: number[] = [];
  let reloading = true;
  const traffic = (async () => {
    while (reloading) {
      const [infer, ready] = await Promise.all([
        fetch(`${server.url}/v2/models/add_sub/infer`, addSubRequest()),
        fetch(`${server.url}/v2/models/add_sub/ready`),
      ]);
      await infer.arrayBuffer();
      statuses.push(infer.status, ready.status);
    }
  })();
  const reloaded = await reload({ ...config, instance_group: [{ kind: 'KIND_CPU', count: 2 }] });
  reloading = false;
  await traffic;
  assert.equal(reloaded.status, 200, await reloaded.clone().text());
  assert.ok(statuses.length > 4, `only ${statuses.length} requests during the reload`);
  assert.deepEqual(statuses.filter((status) => status !== 200), [], 'requests failed during the reload');
  const served = await (await fetch(`${server.url}/v2/models/add_sub/config`)).json() as any;
  assert.equal(served.instance_group[0].count, 2);

  // 2. a reload whose backend fails to load reports why and leaves the old version serving
  const failed = await reload({ ...config, default_model_filename: 'missing.py' });
  assert.equal(failed.status, 400, 'a model file the config names is the caller\'s to fix');
  assert.match((await failed.json() as any).error, /missing\.py.*keep serving/s);
  assert.equal((await fetch(`${server.url}/v2/models/add_sub/ready`)).status, 200);
  const sum = await fetch(`${server.url}/v2/models/add_sub/infer`, addSubRequest());
  assert.equal(sum.status, 200);
  assert.deepEqual((await sum.json() as any).outputs[0].data, [2, 3, 4, 5]);
  const after = await (await fetch(`${server.url}/v2/models/add_sub/config`)).json() as any;
  assert.equal(after.instance_group[0].count, 2, 'the config served is the one that loaded');
});
