import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { quoted, SdserveError } from '../errors.js';
import { resolveConfinedPath } from '../repository/index.js';
import type { ModelConfig } from '../repository/model-config-types.js';

/**
 * What code and files the operator installed, and so what a model config may name: backends
 * come from the built-in folder or a `--backend-directory`, files from the model's own folder or
 * an `--allowed-path` root. A config override from the repository API is checked the same way as
 * a config.pbtxt, so no request can make the server run code or read weights from elsewhere.
 */
export interface ModelFilePolicy {
  /** python/sdserve_backend/backends: one folder with a model.py per built-in backend. */
  builtInBackends: string;
  /** `--backend-directory`: more backends, laid out like the built-in folder. */
  backendDirectories: readonly string[];
  /** `--allowed-path`: folders outside the model's folder that configs may name. */
  allowedPaths: readonly string[];
  /** `--engine-cache-dir`: where a model's `engine_cache_dir` parameter is taken from, and may point. */
  engineCacheDir: string;
}

/** Triton's Python backend, which runs the version folder's own model file. */
const PYTHON_BACKEND = 'python';
const BACKEND_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/;
/** Config parameters that name a file or folder, relative to the version folder. */
const PATH_PARAMETERS = ['weights', 'weights_config', 'vae_weights', 'text_encoder_weights', 'lora_dir'];
/** The config parameter naming where the backend writes this model's engine (relative to --engine-cache-dir). */
const ENGINE_CACHE_PARAMETER = 'engine_cache_dir';

/**
 * Checks every path `config` names for one version and returns the model file to run.
 * Throws SDS_ERR_CONFIG naming the field when the backend is not installed or a path is not
 * inside the model's folder or an allowed root.
 */
export async function resolveModelFiles(config: ModelConfig, modelDir: string, version: number,
  policy: ModelFilePolicy): Promise<string> {
  const versionDir = path.join(modelDir, String(version));
  const roots = [modelDir, ...policy.allowedPaths];
  // 1. the model file: the backend's, or for python a plain file name inside the version folder
  let modelFile: string;
  if (config.backend === PYTHON_BACKEND) {
    const fileName = config.default_model_filename || 'model.py';
    if (!isPlainFileName(fileName)) {
      throw new SdserveError('SDS_ERR_CONFIG',
        `default_model_filename ${quoted(fileName)} must be a plain file name inside the version folder`);
    }
    modelFile = await resolveConfinedPath(fileName, versionDir, [versionDir], 'default_model_filename');
  } else {
    modelFile = await backendModelFile(config.backend, policy);
  }
  // 2. the files its parameters name
  for (const name of PATH_PARAMETERS) {
    const value = config.parameters[name]?.string_value.trim() ?? '';
    if (value !== '') await resolveConfinedPath(value, versionDir, roots, `config parameter '${name}'`);
  }
  // 3. the folder the backend will write engines into: the engine cache, the model's folder or an allowed root
  const engineCache = config.parameters[ENGINE_CACHE_PARAMETER]?.string_value.trim() ?? '';
  if (engineCache !== '') {
    await resolveConfinedPath(engineCache, policy.engineCacheDir, [policy.engineCacheDir, ...roots],
      `config parameter '${ENGINE_CACHE_PARAMETER}'`, "--engine-cache-dir, the model's folder or an --allowed-path root");
  }
  return modelFile;
}

/**
 * A resolved path inside the model's folder or an allowed root, for paths named after load
 * (a LoRA folder in a request): the same rule and the same error as the config's own paths.
 */
export function resolveModelPath(value: string, modelDir: string, version: number, policy: ModelFilePolicy,
  what: string): Promise<string> {
  return resolveConfinedPath(value, path.join(modelDir, String(version)), [modelDir, ...policy.allowedPaths], what);
}

function isPlainFileName(name: string): boolean {
  return name !== '.' && name !== '..' && !/[/\\\0]/.test(name);
}

/** `<folder>/<backend>/model.py` from the built-in folder, then each backend directory in order. */
async function backendModelFile(backend: string, policy: ModelFilePolicy): Promise<string> {
  const folders = [policy.builtInBackends, ...policy.backendDirectories];
  if (BACKEND_NAME.test(backend) && !backend.includes('..')) {
    for (const folder of folders) {
      const candidate = path.join(folder, backend, 'model.py');
      const found = await stat(candidate).then((s) => s.isFile(), () => false);
      if (found) return candidate;
    }
  }
  const installed = [PYTHON_BACKEND, ...(await installedBackends(folders))];
  throw new SdserveError('SDS_ERR_CONFIG',
    `backend ${quoted(backend)} is not installed; installed backends: ${[...new Set(installed)].sort().join(', ')} `
    + '(more come from --backend-directory)');
}

async function installedBackends(folders: string[]): Promise<string[]> {
  const names = await Promise.all(folders.map(async (folder) => {
    const entries = await readdir(folder, { withFileTypes: true }).catch(() => []);
    const withModel = await Promise.all(entries.map(async (entry) => (
      BACKEND_NAME.test(entry.name) && await stat(path.join(folder, entry.name, 'model.py')).then((s) => s.isFile(), () => false)
        ? entry.name : undefined)));
    return withModel.filter((name): name is string => name !== undefined);
  }));
  return names.flat();
}
