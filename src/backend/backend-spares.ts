/**
 * Backend processes started before a model asks for one (`serve --backend-prestart`). A spare has
 * said hello and imports the built-in backend's code (torch, diffusers) while it waits, so a load
 * that takes it only loads weights: for a compiled engine the imports were most of a warm start.
 * Spares are keyed by how they were spawned (Python, PYTHONPATH, environment, the GPU included):
 * a load takes only a spare that its own spawn would have made. Each taken spare is replaced once
 * its load is done.
 */

import { BackendProcess, type BackendLogger, type BackendSpareSource, type BackendSpawnOptions } from './backend-process.js';

/**
 * What a spare imports ahead: the built-in diffusion backend (torch, diffusers and transformers
 * with it), and Inductor's compiler, which a compiled engine's first load or compile imports.
 */
export const PREIMPORTED_MODULES = ['sdserve_backend.backends.diffusion.model', 'torch._inductor.compile_fx'];

export class BackendSpares implements BackendSpareSource {
  private readonly spares = new Map<string, BackendProcess>();
  private readonly starting = new Map<string, Promise<void>>();
  private closed = false;
  private count = 0;

  constructor(private readonly logger: BackendLogger, private readonly preimport: string[] = PREIMPORTED_MODULES) {}

  /** The spares waiting now, by key (for logs and tests). */
  get size(): number {
    return this.spares.size;
  }

  take(opts: BackendSpawnOptions): BackendProcess | undefined {
    const key = spawnKey(opts);
    const spare = this.spares.get(key);
    this.spares.delete(key);
    return spare?.isAlive ? spare : undefined;
  }

  prestart(opts: BackendSpawnOptions): void {
    const key = spawnKey(opts);
    if (this.closed || this.spares.has(key) || this.starting.has(key)) return;
    this.count += 1;
    const label = `spare_${this.count}`;
    const started = BackendProcess.spawn({ ...opts, label, logger: this.logger, preimport: this.preimport })
      .then((spare) => {
        if (this.closed) {
          void spare.kill();
          return;
        }
        this.spares.set(key, spare);
        this.logger.info(`[${label}] started ahead of its load (pid ${spare.pid})`);
        spare.once('exit', () => {
          if (this.spares.get(key) === spare) this.spares.delete(key);
        });
      })
      .catch((err: unknown) => this.logger.warn(`[${label}] could not start a spare backend: ${(err as Error).message}`))
      .finally(() => this.starting.delete(key));
    this.starting.set(key, started);
  }

  /** Stops every spare (SIGKILL: none holds a model); later `prestart`s start nothing. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.starting.values());
    const spares = [...this.spares.values()];
    this.spares.clear();
    await Promise.all(spares.map((spare) => spare.kill()));
  }
}

function spawnKey(opts: BackendSpawnOptions): string {
  const env = Object.entries(opts.env ?? {}).filter(([, value]) => value !== undefined).sort(([a], [b]) => a.localeCompare(b));
  return JSON.stringify([opts.pythonExecutable, opts.pythonPath, env]);
}
