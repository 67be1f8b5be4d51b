import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { makeRepository, startServerProcess, type ServerProcess } from './support/server-process.js';

/**
 * What the web page is built on, through the real server: the page and its icon, the model's
 * declared parameters it derives its form from, and the queue events of generate_stream. The page
 * itself runs in a real browser in tests/python/test_web_ui.py.
 */

/** The JSON data of each server-sent event of a response, as they arrive. */
async function* events(response: Response): AsyncGenerator<Record<string, unknown>> {
  const decoder = new TextDecoder();
  let buffered = '';
  for await (const chunk of response.body!) {
    buffered += decoder.decode(chunk as Uint8Array, { stream: true });
    let end;
    while ((end = buffered.indexOf('\n\n')) >= 0) {
      const event = buffered.slice(0, end);
      buffered = buffered.slice(end + 2);
      if (event.startsWith('data: ')) yield JSON.parse(event.slice(6)) as Record<string, unknown>;
    }
  }
}

function stream(url: string, body: object, signal?: AbortSignal): Promise<Response> {
  return fetch(`${url}/v2/models/tiny_sd/generate_stream`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal,
  });
}

describe('the web UI\'s server side', () => {
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

  test('serves the page, and its icon instead of a 404', async () => {
    const page = await fetch(`${server.url}/playground`);
    assert.equal(page.status, 200);
    assert.match(page.headers.get('content-type') ?? '', /^text\/html/);
    const html = await page.text();
    assert.doesNotMatch(html, /(src|href)="https?:/, 'no external assets');
    const icon = await fetch(`${server.url}/favicon.ico`);
    assert.equal(icon.status, 200);
    assert.equal(icon.headers.get('content-type'), 'image/svg+xml');
    assert.match(await icon.text(), /^<svg /);
    const root = await fetch(`${server.url}/`, { redirect: 'manual' });
    assert.equal(root.status, 302);
    assert.equal(root.headers.get('location'), '/playground');
  });

  test('tells a client the parameters the model declares, with its defaults', async () => {
    for (const path of ['/v2/models/tiny_sd/capabilities', '/v2/models/tiny_sd/versions/1/capabilities']) {
      const response = await fetch(`${server.url}${path}`);
      assert.equal(response.status, 200);
      const body = await response.json() as Record<string, any>;
      assert.equal(body.model, 'tiny_sd');
      assert.equal(body.declared, true);
      assert.deepEqual(body.tasks, ['text_to_image', 'image_to_image', 'inpaint']);
      assert.equal(body.max_images, 4);
      assert.equal(body.negative_prompt, true);
      assert.deepEqual(body.inputs, ['prompt', 'negative_prompt', 'image', 'mask']);
      assert.deepEqual(body.output_formats, ['png', 'jpeg', 'webp']);
      assert.deepEqual(body.parameters.steps, { type: 'integer', minimum: 1, maximum: 999, default: 20 });
      assert.equal(body.parameters.width.default, 128);
      assert.equal(body.parameters.width.multiple_of, 8);
      assert.ok(body.parameters.scheduler.enum.includes('euler_a'));
      assert.deepEqual(body.parameters.strength.aliases, ['denoising_strength']);
      assert.equal(body.parameters.loras.type, 'string');
      // The LoRA files in tiny_sd's loras/ folder at load, for the page's picker to offer.
      assert.deepEqual(body.parameters.loras.examples, ['tiny_kohya', 'tiny_peft', 'tiny_unet_peft']);
    }
    const unknown = await fetch(`${server.url}/v2/models/nope/capabilities`);
    assert.equal(unknown.status, 400);
    assert.match((await unknown.json() as { error: string }).error, /nope/);
  });

  test('generate_stream tells a waiting request its place in the queue', async () => {
    // Four images fill tiny_sd's batch (max_batch_size 4): the next request waits for them.
    const first = new AbortController();
    const running = await stream(server.url, { prompt: Array(4).fill('a long one'), steps: 500, seed: 1 }, first.signal);
    const runningEvents = events(running);
    assert.ok('progress' in (await runningEvents.next()).value!, 'the first request runs');
    const waiting = await stream(server.url, { prompt: 'a lighthouse', steps: 1, seed: 2 });
    const seen: Array<Record<string, unknown>> = [];
    for await (const event of events(waiting)) {
      seen.push(event);
      if (seen.length === 1) first.abort();  // let it run
    }
    assert.deepEqual(seen[0], { queue: { position: 1 } });
    assert.deepEqual(seen.filter((event) => 'progress' in event).map((event) => (event.progress as { step: number }).step), [1]);
    const result = seen.at(-1) as { generated_image: string[]; parameters: { seed: number } };
    assert.equal(result.generated_image.length, 1);
    assert.equal(result.parameters.seed, 2);
  });
});
