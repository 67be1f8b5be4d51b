/**
 * Strict request parameters: a model that declares its parameters (LoadResponse capabilities)
 * gets only those, each of its declared type and range; anything else is the client's mistake,
 * named with what was meant. Checked here once, for every front end.
 */
import type { CapabilitiesMeta, ParameterSpec, ParameterType } from '../backend/messages.js';
import { invalidArg, quoted } from '../errors.js';
import { parseBoolean } from './booleans.js';
import { closestName } from './did-you-mean.js';
import type { ParameterValue, Parameters } from './types.js';

/** Request parameters the core itself acts on, for every model (Triton's queue policy). */
export const CORE_PARAMETERS = ['priority', 'timeout'] as const;

/**
 * Checks `parameters` (the core's own already taken out) against a model's declared ones and
 * returns them with booleans as JSON booleans. A model that declares nothing gets its parameters
 * as sent, as Triton does.
 */
export function checkRequestParameters(parameters: Parameters, capabilities: CapabilitiesMeta | undefined, model: string): Parameters {
  if (capabilities === undefined) return parameters;
  const specs = capabilities.parameters;
  const checked: Parameters = {};
  for (const [name, value] of Object.entries(parameters)) {
    const spec = Object.hasOwn(specs, name) ? specs[name] : undefined;
    if (spec === undefined) throw unknownParameter(name, capabilities, model);
    checked[name] = checkValue(name, value, spec);
  }
  return checked;
}

/** Every name a client may send to this model, sorted. */
export function acceptedParameters(capabilities: CapabilitiesMeta): string[] {
  return declaredParameters(capabilities).sort();
}

/** Every name a client may send to this model: the backend's in its declaration order, then the core's. */
function declaredParameters(capabilities: CapabilitiesMeta): string[] {
  return [...Object.keys(capabilities.parameters), ...CORE_PARAMETERS];
}

function unknownParameter(name: string, capabilities: CapabilitiesMeta, model: string): Error {
  const accepted = acceptedParameters(capabilities);
  const aliasOf = Object.entries(capabilities.parameters).find(([, spec]) => spec.aliases?.includes(name))?.[0];
  // In the backend's declaration order: of several names `name` starts, the first declared is meant.
  const meant = aliasOf ?? closestName(name, declaredParameters(capabilities));
  return invalidArg(`model '${model}' has no request parameter ${quoted(name, "'")}`
    + `${meant !== undefined ? ` (did you mean '${meant}'?)` : ''}; accepted parameters: ${accepted.join(', ')}`);
}

const TYPE_WORDS: Record<ParameterType, string> = {
  integer: 'an integer', number: 'a number', string: 'a string', boolean: 'a boolean (true or false)',
};

/** 1. the value as one of the declared types  2. its range. */
function checkValue(name: string, value: ParameterValue, spec: ParameterSpec): ParameterValue {
  const types = Array.isArray(spec.type) ? spec.type : [spec.type];
  const shown = quoted(value);
  const typeError = () => invalidArg(`request parameter '${name}' must be ${types.map((t) => TYPE_WORDS[t]).join(' or ')}, got ${shown}`);
  // 1. type: numbers may come as strings (gRPC string_param, exact 64-bit seeds), booleans as "true"/"false"
  let numeric: number | bigint | undefined;
  if (typeof value === 'boolean') {
    if (!types.includes('boolean')) throw typeError();
    return value;
  }
  if (typeof value === 'number') {
    if (types.includes('number') || (types.includes('integer') && Number.isInteger(value))) numeric = value;
    else throw typeError();
  } else if (types.includes('string')) {
    checkEnum(name, value, spec);
    return value;
  } else if (types.includes('boolean') && parseBoolean(value) !== undefined) {
    return parseBoolean(value) as boolean;
  } else if (types.includes('integer') && /^-?\d+$/.test(value.trim())) {
    numeric = BigInt(value.trim());
  } else if (types.includes('number') && value.trim() !== '' && Number.isFinite(Number(value))) {
    numeric = Number(value);
  } else {
    throw typeError();
  }
  // 2. range
  checkEnum(name, value, spec);
  const below = spec.minimum !== undefined && compare(numeric, spec.minimum) < 0;
  const above = spec.maximum !== undefined && compare(numeric, spec.maximum) > 0;
  if (below || above) {
    const range = spec.minimum !== undefined && spec.maximum !== undefined
      ? `between ${spec.minimum} and ${bigText(spec.maximum)}`
      : spec.minimum !== undefined ? `at least ${spec.minimum}` : `at most ${bigText(spec.maximum as number)}`;
    throw invalidArg(`request parameter '${name}' must be ${range}, got ${shown}`);
  }
  if (spec.multiple_of !== undefined && Number(numeric) % spec.multiple_of !== 0) {
    throw invalidArg(`request parameter '${name}' must be a multiple of ${spec.multiple_of}, got ${shown}`);
  }
  return value;
}

function checkEnum(name: string, value: ParameterValue, spec: ParameterSpec): void {
  if (spec.enum === undefined || spec.enum.some((allowed) => allowed === value || String(allowed) === String(value))) return;
  const meant = typeof value === 'string' ? closestName(value, spec.enum.map(String).filter((v) => v !== '')) : undefined;
  throw invalidArg(`request parameter '${name}' must be one of ${spec.enum.map((v) => JSON.stringify(v)).join(', ')}, `
    + `got ${quoted(value)}${meant !== undefined ? ` (did you mean '${meant}'?)` : ''}`);
}

/** Compares exactly where a bound or value is beyond 2^53 (64-bit seeds). */
function compare(value: number | bigint, bound: number): number {
  if (typeof value === 'number' && Number.isSafeInteger(bound)) return value - bound;
  const exactBound = Number.isSafeInteger(bound) ? BigInt(bound) : BigInt(bigText(bound));
  const exactValue = typeof value === 'bigint' ? value : Number.isInteger(value) ? BigInt(value) : undefined;
  if (exactValue === undefined) return (value as number) - bound;
  return exactValue < exactBound ? -1 : exactValue > exactBound ? 1 : 0;
}

/**
 * JSON gives 2^64 - 1 as the double 2^64: a bound that large reads as the 64-bit maximum it
 * stands for.
 */
function bigText(bound: number): string {
  if (Number.isSafeInteger(bound) || !Number.isInteger(bound)) return String(bound);
  const exact = BigInt(bound);
  return String(exact === 2n ** 64n ? exact - 1n : exact === 2n ** 63n ? exact - 1n : exact);
}
