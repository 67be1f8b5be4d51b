/** Worker-thread half of png-pool.ts: one image's pixels in, its PNG file out. */
import { PNG } from 'pngjs';

export interface PngTask {
  width: number;
  height: number;
  /** 3 (RGB) or 4 (RGBA). */
  channels: number;
  pixels: Uint8Array;
}

export default function encodePng({ width, height, channels, pixels }: PngTask): Uint8Array {
  const hasAlpha = channels === 4;
  const colorType = hasAlpha ? 6 : 2;
  const png = new PNG({ width, height });
  png.data = Buffer.from(pixels.buffer, pixels.byteOffset, pixels.byteLength);
  return PNG.sync.write(png, { colorType, inputColorType: colorType, inputHasAlpha: hasAlpha });
}
