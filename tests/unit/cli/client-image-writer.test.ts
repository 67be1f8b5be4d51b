import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import jpeg from 'jpeg-js';
import { ImageWriterPool } from '../../../src/cli/client-image-writer.js';

test('ImageWriterPool writes each image as a JPEG from a worker thread', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'sdserve-image-writer-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const pool = new ImageWriterPool(2);
  t.after(() => pool.close());
  // One buffer holding two 8x4 images, as a batched response does; only the second is written.
  const batch = new Uint8Array(2 * 8 * 4 * 3).fill(30);
  batch.fill(220, 8 * 4 * 3);

  await Promise.all([
    pool.write(join(dir, 'a.jpg'), { width: 8, height: 4, pixels: batch.subarray(8 * 4 * 3) }),
    pool.write(join(dir, 'b.jpg'), { width: 8, height: 4, pixels: batch.subarray(0, 8 * 4 * 3) }),
  ]);

  const a = jpeg.decode(await readFile(join(dir, 'a.jpg')));
  assert.deepEqual([a.width, a.height], [8, 4]);
  assert.ok(Math.abs(a.data[0] - 220) <= 3, `pixel ${a.data[0]}`);
  const b = jpeg.decode(await readFile(join(dir, 'b.jpg')));
  assert.ok(Math.abs(b.data[0] - 30) <= 3, `pixel ${b.data[0]}`);
  assert.equal(batch[0], 30, 'the caller keeps its buffer');
});

test('ImageWriterPool rejects a write that fails in the worker', async (t) => {
  const pool = new ImageWriterPool(1);
  t.after(() => pool.close());
  const missingDir = join(tmpdir(), 'sdserve-no-such-dir-for-image-writer', 'x.jpg');

  await assert.rejects(
    pool.write(missingDir, { width: 2, height: 2, pixels: new Uint8Array(12) }),
    /ENOENT/,
  );
});
