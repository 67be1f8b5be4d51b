import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { test, type TestContext } from 'node:test';
import jpeg from 'jpeg-js';
import { decodeBytesElements } from '../../../src/cli/client-http.js';
import { runClient, type ClientSummary } from '../../../src/cli/client.js';
import {
  BROKEN_MESSAGE, BROKEN_MODEL, HELD_MODEL, IMAGE_HEIGHT, IMAGE_WIDTH, startFakeInferServer,
} from './fake-infer-server.js';

const FLOAT = String.raw`\d+(?:\.\d+)?(?:e-?\d+)?`;

function captureStream(): { stream: Writable; text: () => string } {
  let text = '';
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      text += chunk.toString();
      done();
    },
  });
  return { stream, text: () => text };
}

async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'sdserve-client-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

function assertConsistent(summary: ClientSummary, clients: number, requests: number): void {
  assert.equal(summary.clients.length, clients);
  assert.equal(summary.requests, clients * requests);
  assert.equal(summary.succeeded + summary.failed, summary.requests);
  for (const [index, result] of summary.clients.entries()) {
    assert.equal(result.client, index);
    assert.equal(result.succeeded + result.failed, requests);
    assert.equal(result.latenciesSeconds.length, result.succeeded);
    assert.ok(result.latenciesSeconds.every((latency) => latency >= 0));
    assert.ok(result.latenciesSeconds.every((latency) => latency <= result.elapsedSeconds));
    assert.ok(result.elapsedSeconds <= summary.elapsedSeconds);
    assert.equal(result.throughput, result.succeeded / result.elapsedSeconds);
  }
  assert.equal(summary.throughput, summary.succeeded / summary.elapsedSeconds);
}

test('runClient sends B prompts per request from every client and saves one JPEG per image', async (t) => {
  const server = await startFakeInferServer();
  t.after(() => server.close());
  const outputDir = join(await tempDir(t), 'images');
  const stdout = captureStream();
  const stderr = captureStream();

  const summary = await runClient({
    url: server.baseUrl, model: 'tiny_sd', prompt: 'a red fox', negativePrompt: 'blurry',
    clients: 2, requests: 3, staticBatchSize: 2, saveImage: true, outputDir,
    steps: 4, seed: 42, guidanceScale: 7.5, scheduler: 'euler', width: IMAGE_WIDTH, height: IMAGE_HEIGHT,
    stdout: stdout.stream, stderr: stderr.stream,
  });

  // Requests: 2 clients x 3, each with prompt and negative prompt as BYTES [2,1].
  assert.equal(server.received.length, 6);
  for (const { url, header } of server.received) {
    assert.equal(url, '/v2/models/tiny_sd/infer');
    const [prompt, negative] = header.inputs;
    assert.equal(prompt.name, 'prompt');
    assert.deepEqual(prompt.shape, [2, 1]);
    assert.deepEqual(decodeBytesElements(prompt.data), ['a red fox', 'a red fox']);
    assert.equal(negative.name, 'negative_prompt');
    assert.deepEqual(negative.shape, [2, 1]);
    assert.deepEqual(decodeBytesElements(negative.data), ['blurry', 'blurry']);
    assert.deepEqual(header.parameters, {
      steps: 4, seed: 42, guidance_scale: 7.5, scheduler: 'euler', height: IMAGE_HEIGHT, width: IMAGE_WIDTH,
    });
  }

  // Summary.
  assertConsistent(summary, 2, 3);
  assert.equal(summary.failed, 0);

  // Files: client_{i}_generated_image_{j}_{k}.jpg, each a decodable image of the right size.
  const expected = [];
  for (let i = 0; i < 2; i += 1) {
    for (let j = 0; j < 3; j += 1) {
      for (let k = 0; k < 2; k += 1) expected.push(`client_${i}_generated_image_${j}_${k}.jpg`);
    }
  }
  assert.deepEqual((await readdir(outputDir)).sort(), expected.sort());
  assert.deepEqual(summary.savedImages.map((path) => path.slice(outputDir.length + 1)).sort(), expected.sort());
  const decoded = jpeg.decode(await readFile(join(outputDir, 'client_1_generated_image_2_1.jpg')));
  assert.equal(decoded.width, IMAGE_WIDTH);
  assert.equal(decoded.height, IMAGE_HEIGHT);

  // Report: the tutorial client's lines, then the percentile line; nothing on stderr.
  const lines = stdout.text().trimEnd().split('\n');
  assert.equal(lines.length, 4);
  assert.match(lines[0], new RegExp(`^Client: 0 Throughput: ${FLOAT} Avg. Latency: ${FLOAT}$`));
  assert.match(lines[1], new RegExp(`^Client: 1 Throughput: ${FLOAT} Avg. Latency: ${FLOAT}$`));
  assert.match(lines[2], new RegExp(`^Throughput: ${FLOAT} Total Time: ${FLOAT}$`));
  assert.match(lines[3], new RegExp(`^Latency p50: ${FLOAT} p90: ${FLOAT} p99: ${FLOAT}$`));
  assert.equal(stderr.text(), '');
});

test('runClient names images without a batch index when B is 1 and sends no parameters unless given', async (t) => {
  const server = await startFakeInferServer();
  t.after(() => server.close());
  const outputDir = await tempDir(t);

  const summary = await runClient({
    url: server.baseUrl.replace('http://', ''), requests: 2, saveImage: true, outputDir,
    stdout: captureStream().stream, stderr: captureStream().stream,
  });

  assertConsistent(summary, 1, 2);
  assert.deepEqual((await readdir(outputDir)).sort(), [
    'client_0_generated_image_0.jpg', 'client_0_generated_image_1.jpg',
  ]);
  for (const { url, header } of server.received) {
    assert.equal(url, '/v2/models/tiny_sd/infer');
    assert.deepEqual(header.inputs.map((input) => input.name), ['prompt']);
    assert.deepEqual(header.inputs[0].shape, [1, 1]);
    assert.equal(header.parameters, undefined);
  }
});

test('runClient saves nothing without saveImage', async (t) => {
  const server = await startFakeInferServer();
  t.after(() => server.close());
  const outputDir = await tempDir(t);

  const summary = await runClient({
    url: server.baseUrl, outputDir, stdout: captureStream().stream, stderr: captureStream().stream,
  });

  assert.equal(summary.succeeded, 1);
  assert.deepEqual(summary.savedImages, []);
  assert.deepEqual(await readdir(outputDir), []);
});

test('runClient counts and reports failed requests instead of throwing', async (t) => {
  const server = await startFakeInferServer();
  t.after(() => server.close());
  const stdout = captureStream();
  const stderr = captureStream();

  const summary = await runClient({
    url: server.baseUrl, model: BROKEN_MODEL, clients: 2, requests: 2,
    stdout: stdout.stream, stderr: stderr.stream,
  });

  assertConsistent(summary, 2, 2);
  assert.equal(summary.failed, 4);
  assert.equal(summary.succeeded, 0);
  assert.deepEqual(stderr.text().trimEnd().split('\n').sort(), [
    `Client: 0 request 0 failed: 400 ${BROKEN_MESSAGE}`,
    `Client: 0 request 1 failed: 400 ${BROKEN_MESSAGE}`,
    `Client: 1 request 0 failed: 400 ${BROKEN_MESSAGE}`,
    `Client: 1 request 1 failed: 400 ${BROKEN_MESSAGE}`,
  ]);
  const lines = stdout.text().trimEnd().split('\n');
  assert.match(lines[0], /^Client: 0 Throughput: 0\.0 Avg\. Latency: nan$/);
  assert.equal(lines[3], 'Latency p50: nan p90: nan p99: nan');
});

test('runClient reports a refused connection with its system error code', async () => {
  const server = await startFakeInferServer();
  const { baseUrl } = server;
  await server.close();
  const stderr = captureStream();

  const summary = await runClient({ url: baseUrl, stdout: captureStream().stream, stderr: stderr.stream });

  assert.equal(summary.failed, 1);
  assert.match(stderr.text(), /^Client: 0 request 0 failed: ECONNREFUSED /);
});

test('runClient with a request rate sends without waiting for answers (open loop)', async (t) => {
  const server = await startFakeInferServer();
  t.after(() => server.close());
  const running = runClient({
    url: server.baseUrl, model: HELD_MODEL, clients: 2, requests: 3, requestRate: 200,
    stdout: captureStream().stream, stderr: captureStream().stream,
  });
  // A closed-loop client would send one request per client and wait: six arrive only when open.
  const deadline = Date.now() + 5000;
  while (server.received.length < 6 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  assert.equal(server.received.length, 6);
  server.releaseHeld();
  const summary = await running;
  assertConsistent(summary, 2, 3);
  assert.equal(summary.failed, 0);
});

test('runClient draws each request\'s steps from a range, the same way for the same seed, and writes a JSON summary', async (t) => {
  const server = await startFakeInferServer();
  t.after(() => server.close());
  const dir = await tempDir(t);
  const run = async (file: string) => {
    server.received.length = 0;
    await runClient({
      url: server.baseUrl, requests: 40, steps: { min: 20, max: 50 }, seed: 5, summaryJson: join(dir, file),
      stdout: captureStream().stream, stderr: captureStream().stream,
    });
    return server.received.map(({ header }) => header.parameters?.steps as number);
  };
  const first = await run('a.json');
  assert.ok(first.every((steps) => Number.isInteger(steps) && steps >= 20 && steps <= 50));
  assert.ok(new Set(first).size > 5, 'steps vary between requests');
  assert.deepEqual(await run('b.json'), first);

  const summary = JSON.parse(await readFile(join(dir, 'a.json'), 'utf8')) as Record<string, unknown>;
  assert.equal(summary.requests, 40);
  assert.equal(summary.succeeded, 40);
  assert.deepEqual(summary.steps, { min: 20, max: 50 });
  const latency = summary.latency_seconds as Record<string, number>;
  assert.ok(latency.p50 > 0 && latency.p50 <= latency.p90 && latency.p90 <= latency.p99);
});
