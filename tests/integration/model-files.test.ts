import assert from 'node:assert/strict';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { PROJECT_ROOT, startServerProcess, type ServerProcess } from './support/server-process.js';

const ADD_SUB = path.join(PROJECT_ROOT, 'tests', 'fixtures', 'model_repository', 'add_sub');
const BUILT_IN_BACKENDS = path.join(PROJECT_ROOT, 'python', 'sdserve_backend', 'backends');

/** A model file that, if it were ever imported, would leave a marker file behind. */
function markerWriter(marker: string): string {
  return `open(${JSON.stringify(marker)}, "w").write("ran")\n\nclass TritonPythonModel:\n    def execute(self, requests):\n        return []\n`;
}

describe('a load request names only code and files the operator installed', () => {
  let server: ServerProcess;
  let work: string;
  let repository: string;
  let outside: string;
  let allowed: string;
  let marker: string;
  let engineCache: string;
  let addSubConfig: any;

  const load = (config: object) => fetch(`${server.url}/v2/repository/models/add_sub/load`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ parameters: { config: JSON.stringify(config) } }),
  });
  const withParameter = (key: string, value: string) => ({
    ...addSubConfig, parameters: { [key]: { string_value: value } },
  });

  before(async () => {
    work = mkdtempSync(path.join(os.tmpdir(), 'sdserve-files-'));
    repository = path.join(work, 'repository');
    outside = path.join(work, 'outside');
    allowed = path.join(work, 'allowed');
    marker = path.join(work, 'marker');
    engineCache = path.join(work, 'engines');
    cpSync(ADD_SUB, path.join(repository, 'add_sub'), { recursive: true });
    mkdirSync(path.join(outside, 'evil_backend'), { recursive: true });
    writeFileSync(path.join(outside, 'evil_backend', 'model.py'), markerWriter(marker));
    writeFileSync(path.join(outside, 'evil.py'), markerWriter(marker));
    writeFileSync(path.join(outside, 'secret.safetensors'), 'not weights');
    symlinkSync(path.join(outside, 'evil.py'), path.join(repository, 'add_sub', '1', 'linked.py'));
    symlinkSync(outside, path.join(repository, 'add_sub', '1', 'linked_folder'));
    mkdirSync(allowed);
    writeFileSync(path.join(allowed, 'weights.safetensors'), 'weights');
    // the engine cache does not exist yet (the backend creates it); a link inside it points outside
    server = await startServerProcess(['--model-repository', repository, '--model-control-mode', 'explicit',
      '--load-model', 'add_sub', '--allowed-path', allowed, '--engine-cache-dir', engineCache]);
    addSubConfig = await (await fetch(`${server.url}/v2/models/add_sub/config`)).json();
  });
  after(async () => {
    await server?.stop();
    rmSync(work, { recursive: true, force: true });
  });

  test('a backend name that climbs out of the backends folder is refused and nothing runs', async () => {
    const climb = path.relative(BUILT_IN_BACKENDS, path.join(outside, 'evil_backend'));
    for (const backend of [climb, path.join(outside, 'evil_backend'), 'no_such_backend']) {
      const response = await load({ ...addSubConfig, backend });
      assert.equal(response.status, 400, backend);
      assert.match((await response.json() as any).error, /backend .* is not installed; installed backends: diffusion, python/);
    }
    assert.equal(existsSync(marker), false, 'the backend outside the install was imported');
  });

  test('a model file name that is not a plain name inside the version folder is refused and nothing runs', async () => {
    const climb = path.relative(path.join(repository, 'add_sub', '1'), path.join(outside, 'evil.py'));
    for (const name of [climb, path.join(outside, 'evil.py'), 'linked_folder/evil.py']) {
      const response = await load({ ...addSubConfig, default_model_filename: name });
      assert.equal(response.status, 400, name);
      assert.match((await response.json() as any).error, /default_model_filename .* must be a plain file name inside the version folder/);
    }
    const linked = await load({ ...addSubConfig, default_model_filename: 'linked.py' });
    assert.equal(linked.status, 400);
    assert.match((await linked.json() as any).error, /default_model_filename "linked.py" is not a file or folder inside/);
    assert.equal(existsSync(marker), false, 'the model file outside the version folder was imported');
  });

  test('a refused load leaves the served model serving', async () => {
    await load({ ...addSubConfig, backend: '../../../../x' });
    assert.equal((await fetch(`${server.url}/v2/models/add_sub/ready`)).status, 200);
  });

  test('an instance_group count in the millions is a config error and the server keeps serving', async () => {
    for (const instanceGroup of [[{ kind: 'KIND_CPU', count: 2147483647 }], [{ kind: 'KIND_CPU', count: 65 }],
      Array.from({ length: 65 }, () => ({ kind: 'KIND_CPU', count: 1 }))]) {
      const response = await load({ ...addSubConfig, instance_group: instanceGroup });
      assert.equal(response.status, 400);
      assert.match((await response.json() as any).error, /instance_group.*(at most 64 are allowed|between 1 and 64)/);
    }
    assert.equal((await fetch(`${server.url}/v2/models/add_sub/ready`)).status, 200);
  });

  test('weights outside the model folder are refused alike whether or not they exist', async () => {
    const messages: string[] = [];
    for (const [key, value] of [
      ['weights', path.join(outside, 'secret.safetensors')],
      ['weights', path.join(outside, 'missing.safetensors')],
      ['weights', '../../../outside/secret.safetensors'],
      ['weights', '../../../outside/missing.safetensors'],
      ['weights', 'linked_folder/secret.safetensors'],
      ['weights_config', '/etc'],
      ['weights_config', '/no/such/folder'],
      ['lora_dir', outside],
      ['lora_dir', '../../../outside'],
      ['vae_weights', path.join(outside, 'secret.safetensors')],
      ['vae_weights', '../../../outside/missing.safetensors'],
      ['text_encoder_weights', path.join(outside, 'secret.safetensors')],
      ['text_encoder_weights', 'linked_folder/secret.safetensors'],
    ]) {
      const response = await load(withParameter(key, value));
      assert.equal(response.status, 400, `${key}=${value}`);
      const error = (await response.json() as any).error as string;
      messages.push(error.replace(JSON.stringify(value), '<value>').replace(key, '<key>'));
    }
    assert.equal(new Set(messages).size, 1, messages.join('\n'));
    assert.match(messages[0], /is not a file or folder inside the model's folder or an --allowed-path root/);
  });

  test('weights inside the model folder or an --allowed-path root load', async () => {
    for (const value of [path.join(allowed, 'weights.safetensors'), 'model.py']) {
      const response = await load(withParameter('weights', value));
      assert.equal(response.status, 200, `${value}: ${await response.clone().text()}`);
    }
  });

  test('an engine_cache_dir outside --engine-cache-dir, the model folder and --allowed-path roots is refused', async () => {
    mkdirSync(path.join(work, 'engines-elsewhere'));
    const messages: string[] = [];
    for (const value of [outside, path.join(outside, 'missing'), '../outside', '../outside/new', '/etc', '/no/such/folder',
      path.join(repository, 'add_sub', '1', 'linked_folder')]) {
      const response = await load(withParameter('engine_cache_dir', value));
      assert.equal(response.status, 400, value);
      messages.push(((await response.json() as any).error as string).replace(JSON.stringify(value), '<value>'));
    }
    assert.equal(new Set(messages).size, 1, messages.join('\n'));
    assert.equal(messages[0], "failed to load 'add_sub': "
      + "config parameter 'engine_cache_dir' <value> is not a file or folder inside --engine-cache-dir, the model's folder or an --allowed-path root");
    // a link made inside the engine cache that points outside it is refused too
    mkdirSync(engineCache, { recursive: true });
    symlinkSync(outside, path.join(engineCache, 'linked'));
    const linked = await load(withParameter('engine_cache_dir', 'linked/sd'));
    assert.equal(linked.status, 400);
    assert.match((await linked.json() as any).error, /'engine_cache_dir' "linked\/sd" is not a file or folder inside --engine-cache-dir/);
    assert.equal((await fetch(`${server.url}/v2/models/add_sub/ready`)).status, 200);
  });

  test('an engine_cache_dir under --engine-cache-dir (relative or absolute), the model folder or an allowed root loads', async () => {
    for (const value of ['fast-disk', 'fast-disk/sub', path.join(engineCache, 'absolute'), path.join(allowed, 'engines'),
      path.join(repository, 'add_sub', 'engines')]) {
      const response = await load(withParameter('engine_cache_dir', value));
      assert.equal(response.status, 200, `${value}: ${await response.clone().text()}`);
    }
  });
});
