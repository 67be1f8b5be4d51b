/**
 * RepositoryModelLoad / RepositoryModelUnload parameters (Triton's model repository extension).
 * Only what sdserve acts on is accepted; anything else is refused by name rather than ignored.
 */
import { invalidArg, quoted, SdserveError } from '../../errors.js';
import type { WireRepositoryParameter } from './wire-types.js';

/** The `config` override of a load request (a JSON model configuration), if any. */
export function decodeLoadParameters(model: string, params: Record<string, WireRepositoryParameter>): string | undefined {
  let config: string | undefined;
  for (const [key, param] of Object.entries(params)) {
    if (key === 'config') {
      if (param.parameter_choice !== 'string_param') {
        throw invalidArg(`load of model ${quoted(model, "'")}: parameter 'config' must be a string_param holding JSON`);
      }
      config = param.string_param;
    } else if (key.startsWith('file:')) {
      throw new SdserveError('SDS_ERR_UNSUPPORTED', `load of model ${quoted(model, "'")}: file overrides (${quoted(key, "'")}) are not supported`);
    } else {
      throw invalidArg(`load of model ${quoted(model, "'")}: unknown parameter ${quoted(key, "'")}, expected 'config'`);
    }
  }
  return config;
}

/**
 * Checks an unload request's parameters. `unload_dependents` (sent by tritonclient on every
 * unload) is accepted and has no effect: sdserve has no ensembles, so nothing depends on a model.
 */
export function checkUnloadParameters(model: string, params: Record<string, WireRepositoryParameter>): void {
  for (const [key, param] of Object.entries(params)) {
    if (key !== 'unload_dependents' || param.parameter_choice !== 'bool_param') {
      throw invalidArg(`unload of model ${quoted(model, "'")}: unknown parameter ${quoted(key, "'")}, expected 'unload_dependents' (bool_param)`);
    }
  }
}
