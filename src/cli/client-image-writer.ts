/**
 * A small pool of worker threads that save JPEGs off the main thread (see client-image-worker.ts
 * for why). Jobs go round-robin; each `write` resolves once its file is on disk.
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { ImageWriteDone, ImageWriteJob } from './client-image-worker.js';
import type { RgbImage } from './image-file.js';

interface PendingWrite {
  resolve: () => void;
  reject: (error: Error) => void;
}

interface PoolWorker {
  worker: Worker;
  pending: Map<number, PendingWrite>;
  /** Set once the worker has died; later writes to it fail at once. */
  failure?: Error;
}

export class ImageWriterPool {
  private readonly workers: PoolWorker[];
  private nextId = 0;

  /** `size` defaults to one worker per core, keeping one core for the event loop. */
  constructor(size = Math.max(1, availableParallelism() - 1)) {
    this.workers = Array.from({ length: Math.max(1, size) }, () => this.startWorker());
  }

  write(path: string, image: RgbImage): Promise<void> {
    const id = this.nextId++;
    const target = this.workers[id % this.workers.length];
    if (target.failure !== undefined) return Promise.reject(target.failure);
    // Copy so only this image's bytes cross the thread boundary (a view would clone its
    // whole backing buffer: the full response body), then transfer the copy without another.
    const pixels = new Uint8Array(image.pixels);
    const job: ImageWriteJob = { id, path, image: { width: image.width, height: image.height, pixels } };
    return new Promise<void>((resolve, reject) => {
      target.pending.set(id, { resolve, reject });
      target.worker.postMessage(job, [pixels.buffer]);
    });
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map(({ worker }) => worker.terminate()));
  }

  private startWorker(): PoolWorker {
    const worker = new Worker(new URL('./client-image-worker.js', import.meta.url));
    const entry: PoolWorker = { worker, pending: new Map() };
    worker.on('message', ({ id, error }: ImageWriteDone) => {
      const pending = entry.pending.get(id);
      entry.pending.delete(id);
      if (error === undefined) pending?.resolve();
      else pending?.reject(new Error(error));
    });
    const fail = (error: Error) => {
      entry.failure = error;
      for (const pending of entry.pending.values()) pending.reject(error);
      entry.pending.clear();
    };
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new Error(`image writer worker exited with code ${code}`)));
    return entry;
  }
}
