/**
 * BackendProcess start options for a model of tests/fixtures/model_repository, run by the
 * project's .venv Python on CPU as instance `<model>_0`, version 1.
 */
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import type { BackendLogger, BackendProcessOptions } from '../../../src/backend/index.js';

// Compiled to dist/tests/unit/backend/, four levels below the project root.
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../../..');
export const PYTHON = join(ROOT, '.venv', 'bin', 'python');
export const REPOSITORY = join(ROOT, 'tests', 'fixtures', 'model_repository');
export const TIMEOUT_MS = 60_000;

/** `modelConfig` goes to the backend as its JSON `model_config` argument. */
export function startOptions(model: string, modelConfig: object, logger: BackendLogger): BackendProcessOptions {
  return {
    pythonExecutable: PYTHON,
    pythonPath: [join(ROOT, 'python')],
    modelFile: join(REPOSITORY, model, '1', 'model.py'),
    args: {
      model_config: JSON.stringify(modelConfig),
      model_instance_kind: 'CPU',
      model_instance_name: `${model}_0`,
      model_instance_device_id: '0',
      model_repository: join(REPOSITORY, model),
      model_version: '1',
      model_name: model,
    },
    label: `${model}_0`,
    startTimeoutMs: TIMEOUT_MS,
    loadTimeoutMs: TIMEOUT_MS,
    logger,
  };
}
