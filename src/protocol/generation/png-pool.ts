/**
 * PNG encoding off the event loop: a 1024² image takes ~70 ms of CPU, which on the event loop
 * would stall every HTTP, gRPC and health request meanwhile. Models that declare an
 * `encoded_output` encode in their backend; this pool serves the rest (plain Triton models
 * returning pixels, and progress previews).
 */
import { availableParallelism } from 'node:os';
import { Piscina } from 'piscina';
import type { ImagePreview, Tensor } from '../../core/types.js';
import type { PngTask } from './png-worker.js';

let pool: Piscina<PngTask, Uint8Array> | undefined;

function workers(): Piscina<PngTask, Uint8Array> {
  pool ??= new Piscina<PngTask, Uint8Array>({
    filename: new URL('./png-worker.js', import.meta.url).href,
    minThreads: 0,
    maxThreads: Math.max(1, Math.min(4, availableParallelism() - 1)),
    // Idle threads exit, so an idle server holds none and a finished process is not kept alive.
    idleTimeout: 5_000,
  });
  return pool;
}

/** True for a UINT8 tensor of images: [B, H, W, 3|4]. */
export function isImageBatch(tensor: Tensor): boolean {
  return tensor.datatype === 'UINT8' && tensor.shape.length === 4 && (tensor.shape[3] === 3 || tensor.shape[3] === 4);
}

/** Each image of a [B, H, W, 3|4] UINT8 tensor as PNG bytes, encoded on worker threads. */
export function encodePngImages(tensor: Tensor): Promise<Buffer[]> {
  const [batch, height, width, channels] = tensor.shape;
  const imageBytes = height * width * channels;
  return Promise.all(Array.from({ length: batch }, async (_, b) => {
    // A copy of this image's bytes, transferred: a view would clone its whole backing buffer.
    const pixels = new Uint8Array(tensor.data.subarray(b * imageBytes, (b + 1) * imageBytes));
    const png = await workers().run({ width, height, channels, pixels }, { transferList: [pixels.buffer] });
    return Buffer.from(png.buffer, png.byteOffset, png.byteLength);
  }));
}

/** A progress preview ([H, W, 3] UINT8) as one PNG. */
export async function encodePngPreview(preview: ImagePreview): Promise<Buffer> {
  const [png] = await encodePngImages({ name: 'preview', datatype: 'UINT8', shape: [1, ...preview.shape], data: preview.data });
  return png;
}
