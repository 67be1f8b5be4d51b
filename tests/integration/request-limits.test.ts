import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { bytesTensor } from './support/binary-infer.js';
import { makeRepository, startServerProcess, type ServerProcess } from './support/server-process.js';

/** A binary infer request to tiny_sd with the given text inputs and parameters. */
async function infer(url: string, texts: Record<string, string[]>, parameters: Record<string, unknown>, id?: string) {
  const payloads = Object.entries(texts).map(([name, values]) => ({ name, values, data: bytesTensor(values) }));
  const header = Buffer.from(JSON.stringify({
    inputs: payloads.map(({ name, values, data }) => ({
      name, datatype: 'BYTES', shape: [values.length, 1], parameters: { binary_data_size: data.length },
    })),
    parameters,
    ...(id !== undefined && { id }),
  }));
  const response = await fetch(`${url}/v2/models/tiny_sd/infer`, {
    method: 'POST',
    headers: { 'Inference-Header-Content-Length': String(header.length), 'content-type': 'application/octet-stream' },
    body: Buffer.concat([header, ...payloads.map((p) => p.data)]),
  });
  const text = await response.text();
  return { status: response.status, error: response.status === 200 ? undefined : JSON.parse(text).error as string };
}

describe('a request costs no more than its model allows', () => {
  let server: ServerProcess;
  let repository: ReturnType<typeof makeRepository>;

  before(async () => {
    repository = makeRepository();
    server = await startServerProcess(['--model-repository', repository.dir, '--model-control-mode', 'explicit',
      '--load-model', 'tiny_sd']);
  });
  after(async () => {
    await server?.stop();
    repository?.remove();
  });

  test('a 1 MB prompt is a fast 400 naming max_prompt_chars, and so is a long negative prompt', async () => {
    const started = Date.now();
    const huge = await infer(server.url, { prompt: ['x'.repeat(1024 * 1024)] }, { steps: 1 });
    assert.equal(huge.status, 400);
    assert.match(huge.error as string, /input 'prompt' has an element of 1048576 characters, over the limit of 4000 \(config parameter max_prompt_chars\)/);
    assert.ok(Date.now() - started < 5000, `took ${Date.now() - started} ms`);
    const fourLarge = await infer(server.url, { prompt: Array(4).fill('é'.repeat(2 * 1024 * 1024)) }, { steps: 1 });
    assert.equal(fourLarge.status, 400);
    const negative = await infer(server.url, { prompt: ['a cat'], negative_prompt: ['blurry '.repeat(700)] }, { steps: 1 });
    assert.equal(negative.status, 400);
    assert.match(negative.error as string, /input 'negative_prompt' has an element of 4900 characters/);
  });

  test('an image over max_image_pixels and a request over max_request_cost are 400s', async () => {
    const big = await infer(server.url, { prompt: ['a cat'] }, { height: 4096, width: 4096, steps: 1 });
    assert.equal(big.status, 400);
    assert.match(big.error as string, /an image of 4096x4096 has 16777216 pixels, over the limit of 2097152 \(config parameter max_image_pixels\)/);
    const long = await infer(server.url, { prompt: ['a cat', 'a dog'] }, { height: 1024, width: 1024, steps: 1000 });
    assert.equal(long.status, 400);
    assert.match(long.error as string, /a request of 2 image\(s\) x 1048576 pixels x 1000 steps costs 2097152000, over the limit of 419430400 \(config parameter max_request_cost\)/);
  });

  test('a refusal over a limit quotes the request id as the other checks do: escaped and bounded', async () => {
    const id = `x\n{"level":50}${'x'.repeat(100_000)}`;
    const big = await infer(server.url, { prompt: ['a cat'] }, { height: 4096, width: 4096, steps: 1 }, id);
    assert.equal(big.status, 400);
    const message = big.error as string;
    assert.ok(message.length < 1024, `a message of ${message.length} characters`);
    assert.doesNotMatch(message, /[\n\r]/);
    assert.match(message, /^\[request id: x\\n\{"level":50\}x+… \(100014 characters\)\] an image of 4096x4096 has 16777216 pixels/);
  });

  test('a prompt of 4,000 characters is served', async () => {
    const ok = await infer(server.url, { prompt: ['a'.repeat(4000)] }, { steps: 1, height: 64, width: 64 });
    assert.equal(ok.status, 200, ok.error);
    assert.equal((await fetch(`${server.url}/v2/models/tiny_sd/ready`)).status, 200);
  });

  test('1000 steps with PNDM, DDIM or DDPM is a 400 naming the range, not an IndexError', async () => {
    for (const scheduler of ['pndm', 'ddim', 'ddpm']) {
      const response = await infer(server.url, { prompt: ['a cat'] }, { steps: 1000, scheduler, height: 64, width: 64 });
      assert.equal(response.status, 400, `${scheduler}: ${response.error}`);
      assert.match(response.error as string, /steps.*999/);
    }
  });

  test('a 100,000-character sampler, refiner, parameter name or scheduler is a 400 whose short message names the field; the model serves on', async () => {
    const long = `x\n{"level":50}${'x'.repeat(100_000)}`;
    const post = async (route: string, body: object) => {
      const response = await fetch(`${server.url}${route}`, {
        method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
      });
      return { status: response.status, text: await response.text() };
    };
    const small = { prompt: 'a cat', steps: 1, width: 64, height: 64 };
    const refusals: Array<[string, { status: number; text: string }, RegExp]> = [
      ['A1111 sampler_name', await post('/sdapi/v1/txt2img', { ...small, sampler_name: long }),
        /^txt2img: unknown sampler "x\\n\{\\"level\\":50\}x+"… \(100014 characters\); samplers: Euler a, /],
      ['A1111 refiner_checkpoint', await post('/sdapi/v1/txt2img', { ...small, refiner_checkpoint: long }),
        /^txt2img: "refiner_checkpoint" "x\\n.*"… \(100014 characters\): model 'tiny_sd' has no refiner/],
      ['generate parameter name', await post('/v2/models/tiny_sd/generate', { ...small, [long]: 1 }),
        /^model 'tiny_sd' has no request parameter 'x\\n.*'… \(100014 characters\); accepted parameters: /],
      ['generate scheduler', await post('/v2/models/tiny_sd/generate', { ...small, scheduler: long }),
        /^request parameter 'scheduler' must be one of .*, got "x\\n.*"… \(100014 characters\)$/],
    ];
    const kserve = await infer(server.url, { prompt: ['a cat'] }, { steps: 1, [long]: 1 });
    refusals.push(['KServe parameter name', { status: kserve.status, text: JSON.stringify({ error: kserve.error }) },
      /^model 'tiny_sd' has no request parameter 'x\\n.*'… \(100014 characters\)/]);
    for (const [what, { status, text }, expected] of refusals) {
      assert.equal(status, 400, `${what}: ${text.slice(0, 300)}`);
      assert.ok(text.length < 2048, `${what}: a body of ${text.length} bytes`);
      const message = JSON.parse(text).error as string;
      assert.match(message, expected, what);
      assert.doesNotMatch(message, /[\n\r]/, `${what}: a raw line break`);
    }
    const served = await post('/sdapi/v1/txt2img', { ...small, sampler_name: 'Euler a' });
    assert.equal(served.status, 200, served.text.slice(0, 300));
    const generated = await post('/v2/models/tiny_sd/generate', { ...small, scheduler: 'euler_a' });
    assert.equal(generated.status, 200, generated.text.slice(0, 300));
  });

  test('a config override with a 100,000-character parameter name is a 400 whose short message names it; the model serves on', async () => {
    const config = await (await fetch(`${server.url}/v2/models/tiny_sd/config`)).json() as any;
    config.parameters[`x${'y'.repeat(100_000)}`] = { string_value: '1' };
    const response = await fetch(`${server.url}/v2/repository/models/tiny_sd/load`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ parameters: { config: JSON.stringify(config) } }),
    });
    const text = await response.text();
    assert.equal(response.status, 400, text.slice(0, 300));
    assert.ok(text.length < 2048, `a body of ${text.length} bytes`);
    assert.match(JSON.parse(text).error, /config parameter 'xy+'… \(100001 characters\) is not known/);
    assert.equal((await fetch(`${server.url}/v2/models/tiny_sd/ready`)).status, 200);
  });

  test('a limit that is not a non-negative integer is a config error', async () => {
    const config = await (await fetch(`${server.url}/v2/models/tiny_sd/config`)).json() as any;
    config.parameters.max_prompt_chars = { string_value: 'lots' };
    const response = await fetch(`${server.url}/v2/repository/models/tiny_sd/load`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ parameters: { config: JSON.stringify(config) } }),
    });
    assert.equal(response.status, 400);
    assert.match((await response.json() as any).error, /config parameter 'max_prompt_chars' must be a non-negative integer/);
  });
});
