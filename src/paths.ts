import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The project folder (this file runs from dist/src/). */
export const PROJECT_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Python for backend processes: $SDSERVE_PYTHON, else the project's .venv, else python3 on PATH. */
export function defaultPythonExecutable(): string {
  if (process.env.SDSERVE_PYTHON) return process.env.SDSERVE_PYTHON;
  const venvPython = path.join(PROJECT_ROOT, '.venv', 'bin', 'python');
  return existsSync(venvPython) ? venvPython : 'python3';
}

/**
 * Where GPU engines and compiled kernels go unless --engine-cache-dir says otherwise: the user's
 * cache folder ($XDG_CACHE_HOME, else ~/.cache), never the model repository (which may be read-only).
 */
export function defaultEngineCacheDir(): string {
  const cacheHome = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(cacheHome, 'sdserve', 'engines');
}
