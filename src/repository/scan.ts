import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { SdserveError } from '../errors.js';
import type { ModelConfig } from './model-config-types.js';
import { parseModelConfig } from './model-config.js';

export const CONFIG_FILE_NAME = 'config.pbtxt';

/** One model folder of the repository; `error` says why it cannot load. */
export interface ModelEntry {
  name: string;
  dir: string;
  configFile: string;
  config?: ModelConfig;
  error?: string;
  /** Numeric version folders, ascending. */
  versions: number[];
}

// Triton's repository layout: version folders are numerically named and do not start with 0.
const VERSION_FOLDER = /^[1-9][0-9]*$/;

/**
 * Lists the models of a Triton-layout repository, in name order. A model whose config is
 * missing or invalid is returned with `error` set; it never stops the others.
 */
export async function scanRepository(repoPath: string): Promise<ModelEntry[]> {
  const modelNames = await listSubfolders(repoPath).catch((err: unknown) => {
    throw new SdserveError('SDS_ERR_CONFIG',
      `model repository ${repoPath} cannot be read: ${(err as Error).message}`, { cause: err });
  });
  const entries = await Promise.all(
    modelNames.filter((name) => !name.startsWith('.')).map((name) => scanModel(repoPath, name)),
  );
  return entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

async function scanModel(repoPath: string, name: string): Promise<ModelEntry> {
  const dir = join(repoPath, name);
  const configFile = join(dir, CONFIG_FILE_NAME);
  // An unreadable folder also fails the config read below, which reports why.
  const versions = (await listSubfolders(dir).catch(() => []))
    .filter((folder) => VERSION_FOLDER.test(folder))
    .map(Number)
    .sort((a, b) => a - b);
  const entry: ModelEntry = { name, dir, configFile, versions };

  let text: string;
  try {
    text = await readFile(configFile, 'utf8');
  } catch (err) {
    const reason = (err as NodeJS.ErrnoException).code === 'ENOENT'
      ? `no ${CONFIG_FILE_NAME} in ${dir}`
      : `${configFile} cannot be read: ${(err as Error).message}`;
    return { ...entry, error: reason };
  }
  try {
    return { ...entry, config: parseModelConfig(text, configFile, name) };
  } catch (err) {
    return { ...entry, error: (err as Error).message };
  }
}

/** Names of the folders (or links to folders) directly inside `dir`. */
async function listSubfolders(dir: string): Promise<string[]> {
  const dirents = await readdir(dir, { withFileTypes: true });
  const folders = await Promise.all(dirents.map(async (dirent) => {
    if (dirent.isDirectory()) return dirent.name;
    if (!dirent.isSymbolicLink()) return undefined;
    const target = await stat(join(dir, dirent.name)).catch(() => undefined);
    return target?.isDirectory() ? dirent.name : undefined;
  }));
  return folders.filter((name): name is string => name !== undefined);
}

/**
 * The versions the policy serves out of those present, ascending. A `specific` version that has
 * no folder is left out; the caller reports it if it cares.
 */
export function resolveVersions(config: Pick<ModelConfig, 'version_policy'>, available: number[]): number[] {
  const present = [...new Set(available)].sort((a, b) => a - b);
  const policy = config.version_policy;
  if ('all' in policy) return present;
  if ('specific' in policy) return present.filter((version) => policy.specific.versions.includes(version));
  return present.slice(Math.max(0, present.length - policy.latest.num_versions));
}
