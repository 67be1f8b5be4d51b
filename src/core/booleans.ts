import type { ParameterValue } from './types.js';

/**
 * The one way sdserve reads a boolean request parameter, on every front end: JSON true/false, or
 * the strings "true"/"false" in any case (gRPC string_param, query strings, form fields).
 * Anything else is not a boolean: undefined.
 */
export function parseBoolean(value: ParameterValue | undefined): boolean | undefined {
  if (typeof value === 'boolean') return value;
  if (typeof value !== 'string') return undefined;
  const lower = value.trim().toLowerCase();
  return lower === 'true' ? true : lower === 'false' ? false : undefined;
}
