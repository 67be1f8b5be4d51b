import { existsSync } from 'node:fs';
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
