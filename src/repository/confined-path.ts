import { realpath } from 'node:fs/promises';
import path from 'node:path';
import { SdserveError } from '../errors.js';

/**
 * Where a path a model config names (a model file, `weights`, `weights_config`, a LoRA folder)
 * really is: `value` taken relative to `base` unless absolute, symlinks resolved, and required to
 * lie inside one of `roots` (the model's folder, then the operator's `--allowed-path` roots).
 *
 * A path outside the roots is refused with the same error whether or not it exists, so that a
 * config override cannot be used to learn what exists elsewhere on the host. A missing path whose
 * nearest existing folder is inside a root is returned as it is, for the loader to report as
 * missing with its own advice.
 */
export async function resolveConfinedPath(value: string, base: string, roots: readonly string[], what: string): Promise<string> {
  const refused = () => new SdserveError('SDS_ERR_CONFIG',
    `${what} ${JSON.stringify(value)} is not a file or folder inside the model's folder or an --allowed-path root`);
  if (value === '' || value.includes('\0')) throw refused();
  const realRoots = (await Promise.all(roots.map((root) => realpath(root).catch(() => undefined))))
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
  let ancestor = path.dirname(named);
  for (;;) {
    const existing = await realpath(ancestor).catch(() => undefined);
    if (existing !== undefined) {
      if (!inRoots(existing)) throw refused();
      return named;
    }
    if (path.dirname(ancestor) === ancestor) throw refused();
    ancestor = path.dirname(ancestor);
  }
}

/** Whether `candidate` is `root` or below it (both absolute and free of symlinks). */
export function isInside(candidate: string, root: string): boolean {
  const relative = path.relative(root, candidate);
  return relative === '' || (relative !== '..' && !relative.startsWith(`..${path.sep}`) && !path.isAbsolute(relative));
}
