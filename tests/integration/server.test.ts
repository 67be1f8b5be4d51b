import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import jpeg from 'jpeg-js';
import { bytesTensor } from './support/binary-infer.js';
import { makeRepository, SDSERVE_BIN, startServerProcess, type ServerProcess } from './support/server-process.js';

const BROKEN_CONFIG = `backend: "diffusion"
max_batch_size: 1
input [ { name: "prompt" data_type: TYPE_STRIN dims: [1] } ]
`;
const NO_WEIGHTS_CONFIG = readFileSync(path.join('model_repository', 'stable_diffusion_1_5', 'config.pbtxt'), 'utf8');

const JSON_TYPE = { 'content-type': 'application/json' };

async function postJson(url: string, body: unknown): Promise<{ status: number; json: any }> {
  const response = await fetch(url, { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });
  return { status: response.status, json: await response.json() };
}

describe('sdserve serve on the built-in tiny model', () => {
  let server: ServerProcess;
  let repository: ReturnType<typeof makeRepository>;

  before(async () => {
    repository = makeRepository({
      broken_config: { config: BROKEN_CONFIG },
      no_weights: { config: NO_WEIGHTS_CONFIG.replace(/max_batch_size: 1/, 'max_batch_size: 1') },
    });
    server = await startServerProcess(['--model-repository', repository.dir, '--log-verbose', '1']);
  });
  after(async () => {
    await server?.stop();
    repository?.remove();
  });

  test('prints the model table with READY and UNAVAILABLE rows and their reasons', () => {
    const out = server.stdout();
    assert.match(out, /^\+-+\+-+\+-+\+$/m);
    assert.match(out, /^\| Model +\| Version \| Status +\|$/m);
    assert.match(out, /^\| tiny_sd +\| 1 +\| READY +\|$/m);
    assert.match(out, /^\| broken_config +\| +\| UNAVAILABLE: .*config\.pbtxt:3:\d+: .*TYPE_STRIN/m);
    assert.match(out, /^\| no_weights +\| 1 +\| UNAVAILABLE: .*weights not found at .*1\.5-pytorch_model/m);
  });

  test('answers health and metadata like Triton', async () => {
    assert.equal((await fetch(`${server.url}/v2/health/live`)).status, 200);
    assert.equal((await fetch(`${server.url}/v2/models/tiny_sd/ready`)).status, 200);
    assert.equal((await fetch(`${server.url}/v2/models/no_weights/ready`)).status, 400);
    const metadata = await (await fetch(`${server.url}/v2/models/tiny_sd`)).json() as any;
    assert.deepEqual(metadata.inputs.map((i: any) => [i.name, i.datatype, i.shape]),
      [['prompt', 'BYTES', [-1, 1]], ['negative_prompt', 'BYTES', [-1, 1]],
        ['image', 'UINT8', [-1, -1, -1, -1]], ['mask', 'UINT8', [-1, -1, -1, -1]]]);
    assert.deepEqual(metadata.outputs, [
      { name: 'generated_image', datatype: 'UINT8', shape: [-1, -1, -1, -1] },
      { name: 'generated_image_encoded', datatype: 'BYTES', shape: [-1, 1] },
    ]);
    const config = await (await fetch(`${server.url}/v2/models/tiny_sd/config`)).json() as any;
    assert.equal(config.backend, 'diffusion');
    assert.equal(config.parameters.image_height.string_value, '128');
    const server_ = await (await fetch(`${server.url}/v2`)).json() as any;
    assert.equal(server_.name, 'sdserve');
    for (const extension of ['binary_tensor_data', 'model_repository', 'statistics', 'generate']) {
      assert.ok(server_.extensions.includes(extension), `extension ${extension}`);
    }
  });

  test('JSON infer returns a uint8 image of the configured size', async () => {
    const { status, json } = await postJson(`${server.url}/v2/models/tiny_sd/infer`, {
      id: 'json-1',
      inputs: [{ name: 'prompt', datatype: 'BYTES', shape: [1, 1], data: ['a red fox'] }],
      parameters: { steps: 3, seed: 7 },
    });
    assert.equal(status, 200, JSON.stringify(json));
    assert.equal(json.id, 'json-1');
    const [image] = json.outputs;
    assert.deepEqual([image.name, image.datatype, image.shape], ['generated_image', 'UINT8', [1, 128, 128, 3]]);
    assert.equal(image.data.length, 128 * 128 * 3);
    assert.ok(image.data.every((v: number) => Number.isInteger(v) && v >= 0 && v <= 255));
    assert.ok(new Set(image.data).size > 16, 'image is not a constant');
  });

  test('binary infer with a batch of two prompts; the same seed gives the same image', async () => {
    const infer = async (seed: number) => {
      const prompts = bytesTensor(['a cat', 'a cat']);
      const header = Buffer.from(JSON.stringify({
        inputs: [{ name: 'prompt', datatype: 'BYTES', shape: [2, 1], parameters: { binary_data_size: prompts.length } }],
        outputs: [{ name: 'generated_image', parameters: { binary_data: true } }],
        parameters: { steps: 2, seed, width: 64, height: 96 },
      }));
      const response = await fetch(`${server.url}/v2/models/tiny_sd/infer`, {
        method: 'POST',
        headers: { 'Inference-Header-Content-Length': String(header.length), 'content-type': 'application/octet-stream' },
        body: Buffer.concat([header, prompts]),
      });
      const body = Buffer.from(await response.arrayBuffer());
      assert.equal(response.status, 200, body.toString());
      const jsonLength = Number(response.headers.get('inference-header-content-length'));
      const meta = JSON.parse(body.subarray(0, jsonLength).toString());
      assert.deepEqual(meta.outputs[0].shape, [2, 96, 64, 3]);
      assert.equal(meta.outputs[0].parameters.binary_data_size, 2 * 96 * 64 * 3);
      return body.subarray(jsonLength);
    };
    const first = await infer(11);
    assert.equal(first.length, 2 * 96 * 64 * 3);
    assert.ok(first.equals(await infer(11)), 'same seed, same image');
    assert.ok(!first.equals(await infer(12)), 'another seed, another image');
    const half = first.length / 2;
    assert.ok(!first.subarray(0, half).equals(first.subarray(half)), 'the two images of a batch differ');
  });

  test('bad requests get 4xx with a message and the server keeps serving', async () => {
    const unknown = await postJson(`${server.url}/v2/models/nope/infer`, { inputs: [] });
    assert.equal(unknown.status, 400);
    assert.match(unknown.json.error, /unknown model: 'nope'/);
    const wrongType = await postJson(`${server.url}/v2/models/tiny_sd/infer`, {
      inputs: [{ name: 'prompt', datatype: 'FP32', shape: [1, 1], data: [1] }],
    });
    assert.equal(wrongType.status, 400);
    assert.match(wrongType.json.error, /data-type is 'FP32', but model 'tiny_sd' expects 'BYTES'/);
    const missing = await postJson(`${server.url}/v2/models/tiny_sd/infer`, { inputs: [] });
    assert.equal(missing.status, 400);
    assert.match(missing.json.error, /missing required input\(s\) \['prompt'\]/);
    const badSize = await postJson(`${server.url}/v2/models/tiny_sd/infer`, {
      inputs: [{ name: 'prompt', datatype: 'BYTES', shape: [1, 1], data: ['x'] }], parameters: { width: 30 },
    });
    assert.ok(badSize.status >= 400 && badSize.status < 500, JSON.stringify(badSize));
    assert.match(badSize.json.error, /width/);
    const notReady = await postJson(`${server.url}/v2/models/no_weights/infer`, {
      inputs: [{ name: 'prompt', datatype: 'BYTES', shape: [1, 1], data: ['x'] }],
    });
    assert.equal(notReady.status, 404);
    assert.match(notReady.json.error, /has no available versions/);
    assert.equal((await fetch(`${server.url}/v2/models/tiny_sd/ready`)).status, 200);
  });

  test('the client saves decodable JPEGs and prints the seed client\'s lines', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'sdserve-client-'));
    try {
      const out = execFileSync(process.execPath, [SDSERVE_BIN, 'client', '--model', 'tiny_sd', '--url', server.url,
        '--clients', '2', '--requests', '2', '--static-batch-size', '1', '--steps', '2', '--save-image',
        '--output-dir', dir, '--no-progress'], { encoding: 'utf8' });
      assert.match(out, /^Client: 0 Throughput: [\d.e+-]+ Avg\. Latency: [\d.e+-]+$/m);
      assert.match(out, /^Client: 1 Throughput: [\d.e+-]+ Avg\. Latency: [\d.e+-]+$/m);
      assert.match(out, /^Throughput: [\d.e+-]+ Total Time: [\d.e+-]+$/m);
      const files = readdirSync(dir).sort();
      assert.deepEqual(files, ['client_0_generated_image_0.jpg', 'client_0_generated_image_1.jpg',
        'client_1_generated_image_0.jpg', 'client_1_generated_image_1.jpg']);
      const decoded = jpeg.decode(readFileSync(path.join(dir, files[0])));
      assert.equal(decoded.width, 128);
      assert.equal(decoded.height, 128);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a client that goes away cancels only its own request, even when another uses the same id', async () => {
    const body = (steps: number) => JSON.stringify({
      id: 'same', inputs: [{ name: 'prompt', datatype: 'BYTES', shape: [1, 1], data: ['twin'] }],
      parameters: { steps, width: 64, height: 64 },
    });
    const leaving = new AbortController();
    const firstRunning = server.waitForLog(/executing 1 request/);
    const abandoned = fetch(`${server.url}/v2/models/tiny_sd/infer`, { method: 'POST', headers: JSON_TYPE, body: body(300), signal: leaving.signal })
      .catch((err: Error) => err);
    await firstRunning;
    const secondRunning = server.waitForLog(/executing 1 request/);
    const kept = fetch(`${server.url}/v2/models/tiny_sd/infer`, { method: 'POST', headers: JSON_TYPE, body: body(60) });
    await secondRunning;
    leaving.abort();
    assert.ok(await abandoned instanceof Error);
    const response = await kept;
    assert.equal(response.status, 200, await response.clone().text());
    assert.equal((await response.json() as any).id, 'same');
  });

  test('a killed backend fails its in-flight request with a clear error, then comes back', async () => {
    const executing = server.waitForLog(/executing 1 request/);
    const inFlight = postJson(`${server.url}/v2/models/tiny_sd/infer`, {
      inputs: [{ name: 'prompt', datatype: 'BYTES', shape: [1, 1], data: ['slow'] }], parameters: { steps: 999 },
    });
    const line = await executing;
    const pid = Number(/pid (\d+)/.exec(line)?.[1]);
    assert.ok(pid > 0, line);
    const restarted = server.waitForLog(/restarted/);
    process.kill(pid, 'SIGKILL');
    const failed = await inFlight;
    assert.equal(failed.status, 500);
    assert.match(failed.json.error, /exited .*SIGKILL.* while running this request/);
    await restarted;
    const again = await postJson(`${server.url}/v2/models/tiny_sd/infer`, {
      inputs: [{ name: 'prompt', datatype: 'BYTES', shape: [1, 1], data: ['again'] }], parameters: { steps: 2 },
    });
    assert.equal(again.status, 200, JSON.stringify(again.json).slice(0, 300));
  });
});
