import { realpath } from 'node:fs/promises';
import path from 'node:path';
import { quoted, SdserveError } from '../errors.js';

/**
 * Where a path a model config names (a model file, `weights`, `weights_config`, a LoRA folder)
 * really is: `value` taken relative to `base` unless absolute, symlinks resolved, and required to
 * lie inside one of `roots` (the model's folder, then the operator's `--allowed-path` roots).
 *
 * A path outside the roots is refused with the same error whether or not it exists, so that a
 * config override cannot be used to learn what exists elsewhere on the host. A missing path whose
 * nearest existing folder is inside a root is returned as it is, for the loader to report as
 * missing with its own advice (or, for a cache folder, to create). A root that does not exist yet
 * counts as the folder it will be. `where` names the roots in the error.
 */
export async function resolveConfinedPath(value: string, base: string, roots: readonly string[], what: string,
  where = "the model's folder or an --allowed-path root"): Promise<string> {
  const refused = () => new SdserveError('SDS_ERR_CONFIG',
    `${what} ${quoted(value)} is not a file or folder inside ${where}`);
  if (value === '' || value.includes('\0')) throw refused();
  const realRoots = (await Promise.all(roots.map((root) => realPathOfMaybeMissing(root))))
    .filter((root): root is string => root !== undefined);
  const inRoots = (candidate: string) => realRoots.some((root) => isInside(candidate, root));
  const named = path.resolve(base, value);
  const real = await realpath(named).catch(() => undefined);
  if (real !== undefined) {
    if (!inRoots(real)) throw refused();
    return real;
  }
  // Missing: '..' would be resolved through symlinks by the loader but lexically here, so refuse it.
  if (value.split(/[/\\]/).includes('..')) throw refused();
  const realNamed = await realPathOfMaybeMissing(named);
  if (realNamed === undefined || !inRoots(realNamed)) throw refused();
  return named;
}

/** The real path of the nearest existing folder above `named`, with the missing rest appended. */
async function realPathOfMaybeMissing(named: string): Promise<string | undefined> {
  const missing: string[] = [];
  let existing = path.resolve(named);
  for (;;) {
    const real = await realpath(existing).catch(() => undefined);
    if (real !== undefined) return path.join(real, ...missing);
    if (path.dirname(existing) === existing) return undefined;
    missing.unshift(path.basename(existing));
    existing = path.dirname(existing);
  }
}

/** Whether `candidate` is `root` or below it (both absolute and free of symlinks). */
export function isInside(candidate: string, root: string): boolean {
  const relative = path.relative(root, candidate);
  return relative === '' || (relative !== '..' && !relative.startsWith(`..${path.sep}`) && !path.isAbsolute(relative));
}
