import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import jpeg from 'jpeg-js';
import { runClient } from '../../src/cli/client.js';
import { credentials, type Client, type ClientDuplexStream } from '@grpc/grpc-js';
import { PNG } from 'pngjs';
import { loadInferenceService } from '../../src/protocol/grpc/index.js';
import { bytesTensor } from './support/binary-infer.js';
import { makeRepository, startServerProcess, type ServerProcess } from './support/server-process.js';

describe('progress of a running text-to-image request', () => {
  let server: ServerProcess;
  let repository: ReturnType<typeof makeRepository>;

  before(async () => {
    repository = makeRepository();
    server = await startServerProcess(['--model-repository', repository.dir]);
  });
  after(async () => {
    await server?.stop();
    repository?.remove();
  });

  test('generate_stream sends one progress event per step, then PNG images', async () => {
    const response = await fetch(`${server.url}/v2/models/tiny_sd/generate_stream`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: ['a lighthouse', 'a harbour'], steps: 3, seed: 5 }),
    });
    assert.equal(response.status, 200);
    assert.match(response.headers.get('content-type') ?? '', /text\/event-stream/);
    const events = (await response.text()).split('\n\n').filter((e) => e.startsWith('data: '))
      .map((e) => JSON.parse(e.slice('data: '.length)));
    const steps = events.filter((e) => e.progress).map((e) => [e.progress.step, e.progress.steps]);
    assert.deepEqual(steps, [[1, 3], [2, 3], [3, 3]]);
    const result = events.at(-1);
    assert.equal(result.model_name, 'tiny_sd');
    assert.equal(result.generated_image.length, 2);
    const png = PNG.sync.read(Buffer.from(result.generated_image[0], 'base64'));
    assert.deepEqual([png.width, png.height], [128, 128]);
  });

  test('the client CLI draws a bar over each request\'s denoising steps and saves its images', async (t) => {
    const outputDir = mkdtempSync(join(tmpdir(), 'sdserve-steps-'));
    t.after(() => rmSync(outputDir, { recursive: true, force: true }));
    let drawn = '';
    const terminal = Object.assign(new Writable({
      write(chunk: Buffer, _encoding, done) { drawn += chunk.toString(); done(); },
    }), { isTTY: true, columns: 160 });
    const summary = await runClient({
      url: server.url, model: 'tiny_sd', requests: 2, staticBatchSize: 2, steps: 3, seed: 9,
      stepProgress: true, saveImage: true, outputDir, stdout: new Writable({ write: (_c, _e, done) => done() }),
      stderr: terminal,
    });
    assert.equal(summary.succeeded, 2);
    assert.match(drawn, /client 0 \[.*\] step 3\/3 \| request 2\/2 failed: 0/);
    assert.equal(summary.savedImages.length, 4);
    const image = jpeg.decode(readFileSync(summary.savedImages[3]));
    assert.deepEqual([image.width, image.height], [128, 128]);

    let errors = '';
    const failed = await runClient({
      url: server.url, model: 'no_such_model', stepProgress: true,
      stdout: new Writable({ write: (_c, _e, done) => done() }),
      stderr: new Writable({ write(chunk: Buffer, _e, done) { errors += chunk.toString(); done(); } }),
    });
    assert.equal(failed.failed, 1);
    assert.match(errors, /request 0 failed: 400 Request for unknown model: 'no_such_model' is not found/);
  });

  test('generate_stream sends preview images on the steps asked for', async () => {
    const response = await fetch(`${server.url}/v2/models/tiny_sd/generate_stream`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'a lighthouse', steps: 4, seed: 5, preview: 2 }),
    });
    const events = (await response.text()).split('\n\n').filter((e) => e.startsWith('data: '))
      .map((e) => JSON.parse(e.slice('data: '.length)));
    const progress = events.filter((e) => e.progress).map((e) => e.progress);
    assert.deepEqual(progress.map((p) => [p.step, p.preview_png !== undefined]), [[1, false], [2, true], [3, false], [4, true]]);
    const preview = PNG.sync.read(Buffer.from(progress[1].preview_png, 'base64'));
    assert.deepEqual([preview.width, preview.height], [16, 16], 'a preview has the latents\' size');
    const bad = await fetch(`${server.url}/v2/models/tiny_sd/generate`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'x', preview: 'often' }),
    });
    assert.equal(bad.status, 400);
    assert.match((await bad.json() as any).error, /preview/);
  });

  test('generate answers bad input with an error naming it', async () => {
    const response = await fetch(`${server.url}/v2/models/tiny_sd/generate`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'x', steps: -2 }),
    });
    assert.equal(response.status, 400);
    assert.match((await response.json() as any).error, /steps/);
  });

  test('gRPC ModelStreamInfer sends progress responses before the image when asked', async (t) => {
    const grpcLine = /Started GRPCInferenceService at (\S+)/.exec(server.stdout());
    assert.ok(grpcLine);
    const Service = await loadInferenceService();
    const client = new Service(grpcLine[1], credentials.createInsecure()) as unknown as Client & Record<string, () => ClientDuplexStream<object, any>>;
    t.after(() => client.close());
    const stream = client.ModelStreamInfer();
    const prompt = bytesTensor(['a fox']);
    const messages: any[] = [];
    const done = new Promise<void>((resolve, reject) => {
      stream.on('data', (message: any) => messages.push(message));
      stream.on('end', resolve);
      stream.on('error', reject);
    });
    stream.write({
      model_name: 'tiny_sd', id: 'fox',
      inputs: [{ name: 'prompt', datatype: 'BYTES', shape: [1, 1] }], raw_input_contents: [prompt],
      parameters: { steps: { int64_param: 2 }, stream_progress: { bool_param: true }, preview: { int64_param: 2 } },
    });
    stream.end();
    await done;
    assert.equal(messages.length, 3, JSON.stringify(messages.map((m) => m.error_message)));
    for (const [i, message] of messages.slice(0, 2).entries()) {
      assert.equal(message.infer_response.parameters.sdserve_progress.bool_param, true);
      assert.equal(message.infer_response.parameters.step.int64_param, i + 1);
      assert.equal(message.infer_response.parameters.steps.int64_param, 2);
    }
    assert.deepEqual(messages[0].infer_response.outputs, []);
    assert.deepEqual(messages[1].infer_response.outputs[0].shape, [1, 16, 16, 3]);
    assert.equal(messages[1].infer_response.raw_output_contents[0].length, 16 * 16 * 3);
    const final = messages[2].infer_response;
    assert.equal(final.id, 'fox');
    assert.deepEqual(final.outputs[0].shape, [1, 128, 128, 3]);
    assert.equal(final.raw_output_contents[0].length, 128 * 128 * 3);
  });
});
