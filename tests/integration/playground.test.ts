import assert from 'node:assert/strict';
import { resolveObjectURL } from 'node:buffer';
import { after, before, describe, test } from 'node:test';
import vm from 'node:vm';
import { PNG } from 'pngjs';
import { makeRepository, startServerProcess, type ServerProcess } from './support/server-process.js';

/**
 * Just enough of a browser for the playground's script: its elements (by id, with the
 * properties the script reads and writes) and globals. No browser runs here; the page's script
 * runs unchanged against the real server.
 */
class PageElement {
  value: string | number = '';
  textContent = '';
  disabled = false;
  max: string | number = 1;
  href = '';
  src = '';
  download = '';
  alt = '';
  children: unknown[] = [];
  /** The children of every replaceChildren call, in order. */
  readonly shown: unknown[][] = [];
  readonly listeners = new Map<string, (event: unknown) => unknown>();

  constructor(readonly tag: string) {}

  replaceChildren(...children: unknown[]): void {
    this.children = children;
    this.shown.push(children);
    // A select shows (and reports) its first option.
    if (this.tag === 'select') this.value = (children[0] as { value?: string } | undefined)?.value ?? '';
  }

  append(...children: unknown[]): void {
    this.children.push(...children);
  }

  addEventListener(type: string, listener: (event: unknown) => unknown): void {
    this.listeners.set(type, listener);
  }
}

interface Page {
  element(id: string): PageElement;
  submit(): Promise<void>;
  /** A function the page's script declares. */
  call(name: string, ...args: unknown[]): unknown;
}

function openPage(html: string, baseUrl: string): Page {
  const elements = new Map<string, PageElement>();
  for (const [, tag, id] of html.matchAll(/<(\w+)[^>]*\sid="([^"]+)"/g)) elements.set(id!, new PageElement(tag!));
  const script = /<script>([\s\S]*)<\/script>/.exec(html)?.[1];
  assert.ok(script, 'the page has an inline script');
  const element = (id: string) => {
    const found = elements.get(id);
    assert.ok(found, `the page has an element #${id}`);
    return found;
  };
  const context = vm.createContext({
    document: { getElementById: element, createElement: (tag: string) => new PageElement(tag) },
    fetch: (url: string, init?: RequestInit) => fetch(new URL(url, baseUrl), init),
    Option: class { constructor(readonly text: string, readonly value: string) {} },
    Image: class extends PageElement { constructor() { super('img'); } },
    TextDecoderStream, AbortController, performance, console, atob, Blob, URL,
  });
  vm.runInContext(script, context);
  return {
    element,
    submit: async () => { await element('form').listeners.get('submit')!({ preventDefault: () => undefined }); },
    call: (name, ...args) => (context[name] as (...values: unknown[]) => unknown)(...args),
  };
}

/** The PNG behind an image link's object URL. */
async function linkedPng(link: PageElement): Promise<PNG> {
  const blob = resolveObjectURL(link.href);
  assert.ok(blob, `${link.href} is a live object URL`);
  assert.equal(blob.type, 'image/png');
  return PNG.sync.read(Buffer.from(await blob.arrayBuffer()));
}

async function eventually(check: () => boolean, what: string): Promise<void> {
  for (let attempt = 0; attempt < 200 && !check(); attempt += 1) await new Promise((resolve) => setTimeout(resolve, 25));
  assert.ok(check(), what);
}

/** The page once it has listed the models. */
async function openLoadedPage(html: string, baseUrl: string): Promise<Page> {
  const page = openPage(html, baseUrl);
  await eventually(() => page.element('model').value === 'tiny_sd', 'the model list was filled');
  return page;
}

describe('the web playground', () => {
  let server: ServerProcess;
  let repository: ReturnType<typeof makeRepository>;
  let html: string;

  before(async () => {
    repository = makeRepository();
    server = await startServerProcess(['--model-repository', repository.dir]);
    const response = await fetch(`${server.url}/playground`);
    assert.equal(response.status, 200);
    assert.match(response.headers.get('content-type') ?? '', /^text\/html/);
    html = await response.text();
  });
  after(async () => {
    await server?.stop();
    repository?.remove();
  });

  test('lists the ready models, streams a request\'s steps and previews and shows its images', async () => {
    const page = openPage(html, server.url);
    await eventually(() => page.element('batch').max === '4', 'the batch field follows tiny_sd\'s max_batch_size');
    assert.deepEqual(page.element('model').children.map((option) => (option as { value: string }).value), ['tiny_sd']);
    const fields = { prompt: 'a lighthouse', batch: '2', steps: '3', seed: '7', width: '64', height: '64', preview: '2' };
    for (const [id, value] of Object.entries(fields)) page.element(id).value = value;

    await page.submit();

    assert.equal(page.element('error').textContent, '');
    assert.match(page.element('status').textContent, /^done in \d+\.\d\d s \(seed 7\)$/);
    assert.equal(page.element('progress').max, 3);
    assert.equal(page.element('progress').value, 3);
    const previews = page.element('images').shown.flat() as PageElement[];
    assert.ok(previews.some((link) => link.download === 'sdserve_preview_0.png'), 'a preview was shown');
    const links = page.element('images').children as PageElement[];
    assert.deepEqual(links.map((link) => link.download), ['sdserve_7_0.png', 'sdserve_7_1.png']);
    for (const link of links) {
      const png = await linkedPng(link);
      assert.deepEqual([png.width, png.height], [64, 64]);
      assert.equal((link.children[0] as PageElement).src, link.href);
    }
    assert.equal(page.element('generate').disabled, false);
    assert.equal(page.element('cancel').disabled, true);
  });

  test('shows the server\'s error for a bad request and can generate again', async () => {
    const page = await openLoadedPage(html, server.url);
    page.element('prompt').value = 'a harbour';
    page.element('steps').value = '5000';

    await page.submit();

    assert.match(page.element('error').textContent, /steps/);
    assert.equal(page.element('images').children.length, 0);
    assert.equal(page.element('generate').disabled, false);
    page.element('steps').value = '1';
    await page.submit();
    assert.equal(page.element('error').textContent, '');
    assert.equal(page.element('images').children.length, 1);
  });

  test('shows the server\'s answer to a request it refuses before streaming', async () => {
    const page = await openLoadedPage(html, server.url);
    page.element('model').value = 'nope';  // e.g. unloaded since the list was read
    await page.submit();
    assert.match(page.element('error').textContent, /unknown model: 'nope'/);
    assert.equal(page.element('generate').disabled, false);
  });

  test('cancels a running request, and the server takes the next one', async () => {
    const page = await openLoadedPage(html, server.url);
    page.element('prompt').value = 'a long one';
    page.element('steps').value = '400';
    const running = page.submit();
    await eventually(() => Number(page.element('progress').value) >= 1, 'the first step arrived');
    page.element('cancel').listeners.get('click')!(undefined);
    await running;
    assert.equal(page.element('status').textContent, 'cancelled');
    assert.equal(page.element('error').textContent, '');
    assert.equal(page.element('generate').disabled, false);
    page.element('steps').value = '1';
    await page.submit();
    assert.match(page.element('status').textContent, /^done in /);
  });

  test('reads events split anywhere, with LF, CRLF or CR line ends', async () => {
    const page = openPage(html, server.url);
    const events = [{ progress: { step: 1, steps: 2 } }, { progress: { step: 2, steps: 2 } }, { generated_image: ['x'.repeat(5000)] }];
    for (const end of ['\n', '\r\n', '\r']) {
      const text = events.map((event) => `data: ${JSON.stringify(event)}${end}${end}`).join('');
      for (const cuts of [[1], [text.indexOf(end) + 1], [7, 100, 2000, text.length - 1]]) {
        const pieces = [0, ...cuts].map((start, index) => text.slice(start, [...cuts, text.length][index]));
        const body = new ReadableStream({
          start(controller) {
            for (const piece of pieces) controller.enqueue(new TextEncoder().encode(piece));
            controller.close();
          },
        });
        const read: unknown[] = [];  // objects of the page's realm: compared as JSON
        await page.call('readEvents', new Response(body), (event: unknown) => read.push(event));
        assert.deepEqual(JSON.parse(JSON.stringify(read)), events, `line end ${JSON.stringify(end)}, cut at ${cuts}`);
      }
    }
  });
});
