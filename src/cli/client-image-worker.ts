/**
 * Worker-thread entry that encodes and writes JPEGs for `client-image-writer.ts`. jpeg-js spends
 * tens of milliseconds building tables on every encode; doing that on the main thread would
 * stall the other clients and inflate the latencies they measure.
 */
import { parentPort } from 'node:worker_threads';
import { writeJpegFile, type RgbImage } from './image-file.js';

export interface ImageWriteJob {
  id: number;
  path: string;
  image: RgbImage;
}

export interface ImageWriteDone {
  id: number;
  error?: string;
}

const port = parentPort;
if (port !== null) {
  port.on('message', async ({ id, path, image }: ImageWriteJob) => {
    let done: ImageWriteDone;
    try {
      await writeJpegFile(path, image);
      done = { id };
    } catch (error) {
      done = { id, error: error instanceof Error ? error.message : String(error) };
    }
    port.postMessage(done);
  });
}
