import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';
import { inferImage, maxAbsDiff } from './support/binary-infer.js';
import { makeRepository, startServerProcess } from './support/server-process.js';

const REQUESTS = 1000;
const CLIENTS = 64;

/** Request variants that differ in what step-level batching must keep per request. */
const VARIANTS = Array.from({ length: 12 }, (_, i) => ({
  prompt: `variant ${i}`,
  parameters: { seed: 100 + i, steps: 1 + (i % 3), guidance_scale: i % 4 === 0 ? 1.0 : 7.5, width: 64, height: 64 },
}));

/** Resident memory of a process and its children, in MiB. */
function treeRssMib(pid: number): number {
  const out = execFileSync('ps', ['-e', '-o', 'pid=,ppid=,rss='], { encoding: 'utf8' });
  const rows = out.trim().split('\n').map((line) => line.trim().split(/\s+/).map(Number));
  const tree = new Set([pid]);
  for (let grew = true; grew;) {
    grew = false;
    for (const [p, parent] of rows) if (tree.has(parent) && !tree.has(p)) { tree.add(p); grew = true; }
  }
  return rows.filter(([p]) => tree.has(p)).reduce((sum, [, , rss]) => sum + rss, 0) / 1024;
}

test(`${REQUESTS} requests from ${CLIENTS} concurrent clients: all answered, each equal to its request run alone`, async (t) => {
  const repository = makeRepository();
  const server = await startServerProcess(['--model-repository', repository.dir]);
  t.after(async () => {
    await server.stop();
    repository.remove();
  });

  // 1. each variant alone
  const alone: Buffer[] = [];
  for (const variant of VARIANTS) {
    const result = await inferImage(server.url, 'tiny_sd', [variant.prompt], variant.parameters);
    assert.equal(result.status, 200, result.error);
    alone.push(result.image as Buffer);
  }
  const rssBefore = treeRssMib(server.child.pid as number);

  // 2. the flood
  let next = 0;
  const failures: string[] = [];
  let answered = 0;
  const worker = async () => {
    while (next < REQUESTS) {
      const index = next++;
      const variant = VARIANTS[index % VARIANTS.length];
      const result = await inferImage(server.url, 'tiny_sd', [variant.prompt], variant.parameters);
      answered += 1;
      if (result.status !== 200) failures.push(`request ${index}: ${result.status} ${result.error}`);
      else {
        const diff = maxAbsDiff(result.image as Buffer, alone[index % VARIANTS.length]);
        if (diff > 2) failures.push(`request ${index}: differs from the same request alone by ${diff}`);
      }
    }
  };
  await Promise.all(Array.from({ length: CLIENTS }, worker));
  assert.equal(answered, REQUESTS);
  assert.deepEqual(failures, []);

  // 3. memory stays bounded and every request is counted
  const rssAfter = treeRssMib(server.child.pid as number);
  assert.ok(rssAfter - rssBefore < 512, `memory grew by ${Math.round(rssAfter - rssBefore)} MiB`);
  const stats = await (await fetch(`${server.url}/v2/models/tiny_sd/stats`)).json() as any;
  const [model] = stats.model_stats;
  assert.equal(model.inference_stats.success.count, REQUESTS + VARIANTS.length);
});
