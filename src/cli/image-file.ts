import { writeFile } from 'node:fs/promises';
import jpeg from 'jpeg-js';

export const JPEG_QUALITY = 90;

/** An RGB image as the server returns it: uint8, row-major, height × width × 3 channels. */
export interface RgbImage {
  width: number;
  height: number;
  pixels: Uint8Array;
}

/** Encodes an RGB image as JPEG bytes. */
export function encodeJpeg(image: RgbImage, quality = JPEG_QUALITY): Buffer {
  const { width, height, pixels } = image;
  const expected = width * height * 3;
  if (pixels.length !== expected) {
    throw new RangeError(
      `encodeJpeg: ${width}x${height} RGB needs ${expected} bytes, got ${pixels.length}`,
    );
  }
  // jpeg-js reads RGBA only; the alpha byte is ignored by the encoder.
  const rgba = Buffer.alloc(width * height * 4, 255);
  for (let source = 0, target = 0; source < expected; source += 3, target += 4) {
    rgba[target] = pixels[source];
    rgba[target + 1] = pixels[source + 1];
    rgba[target + 2] = pixels[source + 2];
  }
  return jpeg.encode({ width, height, data: rgba }, quality).data;
}

/** Writes an RGB image to `path` as a JPEG. */
export async function writeJpegFile(path: string, image: RgbImage): Promise<void> {
  await writeFile(path, encodeJpeg(image));
}
