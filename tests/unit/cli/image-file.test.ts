import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import jpeg from 'jpeg-js';
import { encodeJpeg, writeJpegFile } from '../../../src/cli/image-file.js';

function gradient(width: number, height: number): Uint8Array {
  const pixels = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y += 1) {
    for (let x = 0; x < width; x += 1) {
      const offset = (y * width + x) * 3;
      pixels[offset] = Math.round((x / (width - 1)) * 255);
      pixels[offset + 1] = Math.round((y / (height - 1)) * 255);
      pixels[offset + 2] = 200;
    }
  }
  return pixels;
}

test('writeJpegFile writes a JPEG that decodes to the same size and near the same pixels', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'sdserve-image-file-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const width = 40;
  const height = 24;
  const pixels = gradient(width, height);
  const path = join(dir, 'gradient.jpg');

  await writeJpegFile(path, { width, height, pixels });

  const bytes = await readFile(path);
  assert.deepEqual([...bytes.subarray(0, 2)], [0xff, 0xd8], 'JPEG start-of-image marker');
  const decoded = jpeg.decode(bytes, { useTArray: true });
  assert.equal(decoded.width, width);
  assert.equal(decoded.height, height);
  let totalError = 0;
  let worstError = 0;
  for (let pixel = 0; pixel < width * height; pixel += 1) {
    for (let channel = 0; channel < 3; channel += 1) {
      const error = Math.abs(decoded.data[pixel * 4 + channel] - pixels[pixel * 3 + channel]);
      totalError += error;
      worstError = Math.max(worstError, error);
    }
  }
  assert.ok(totalError / (width * height * 3) < 3, `mean error ${totalError / (width * height * 3)}`);
  assert.ok(worstError < 32, `worst error ${worstError}`);
});

test('encodeJpeg rejects pixel data of the wrong length', () => {
  assert.throws(
    () => encodeJpeg({ width: 4, height: 4, pixels: new Uint8Array(4 * 4 * 4) }),
    /4x4 RGB needs 48 bytes, got 64/,
  );
});
