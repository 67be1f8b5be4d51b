import assert from 'node:assert/strict';
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
  value = '';
  textContent = '';
  disabled = false;
  max = 1;
  href = '';
  src = '';
  download = '';
  alt = '';
  children: unknown[] = [];
  readonly listeners = new Map<string, (event: unknown) => unknown>();

  constructor(readonly tag: string) {}

  replaceChildren(...children: unknown[]): void {
    this.children = children;
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
    TextDecoderStream, AbortController, performance, console,
  });
  vm.runInContext(script, context);
  return {
    element,
    submit: async () => { await element('form').listeners.get('submit')!({ preventDefault: () => undefined }); },
  };
}

async function eventually(check: () => boolean, what: string): Promise<void> {
  for (let attempt = 0; attempt < 200 && !check(); attempt += 1) await new Promise((resolve) => setTimeout(resolve, 25));
  assert.ok(check(), what);
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

  test('lists the ready models, streams a request\'s steps and shows its images', async () => {
    const page = openPage(html, server.url);
    await eventually(() => page.element('model').children.length > 0, 'the model list was filled');
    assert.deepEqual(page.element('model').children.map((option) => (option as { value: string }).value), ['tiny_sd']);
    const fields = { prompt: 'a lighthouse', batch: '2', steps: '3', seed: '7', width: '64', height: '64', preview: '2' };
    for (const [id, value] of Object.entries(fields)) page.element(id).value = value;

    await page.submit();

    assert.equal(page.element('error').textContent, '');
    assert.match(page.element('status').textContent, /^done in \d+\.\d\d s \(seed 7\)$/);
    assert.equal(page.element('progress').max, 3);
    assert.equal(page.element('progress').value, 3);
    const links = page.element('images').children as PageElement[];
    assert.equal(links.length, 2);
    for (const link of links) {
      const [, base64] = link.href.split('data:image/png;base64,');
      const png = PNG.sync.read(Buffer.from(base64!, 'base64'));
      assert.deepEqual([png.width, png.height], [64, 64]);
      assert.equal((link.children[0] as PageElement).src, link.href);
    }
    assert.equal(page.element('generate').disabled, false);
    assert.equal(page.element('cancel').disabled, true);
  });

  test('shows the server\'s error for a bad request and can generate again', async () => {
    const page = openPage(html, server.url);
    await eventually(() => page.element('model').value === 'tiny_sd', 'the model list was filled');
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
});
