import { quoted, SdserveError } from '../errors.js';
import type { PbtxtField, PbtxtMessage, PbtxtValue } from './pbtxt.js';

/**
 * Turns a protobuf-JSON object into the same tree the text parser builds, so one mapping and one
 * set of checks serve both. Arrays become repeated entries; null means "not set", as in protobuf
 * JSON.
 */
export function jsonToMessage(json: unknown, source: string): PbtxtMessage {
  if (!isPlainObject(json)) {
    throw new SdserveError('SDS_ERR_CONFIG', `${source}: expected a JSON object, found ${jsonKind(json)}`);
  }
  return objectToMessage(json, source, '');
}

function objectToMessage(object: Record<string, unknown>, source: string, path: string): PbtxtMessage {
  const fields: PbtxtField[] = [];
  for (const [name, value] of Object.entries(object)) {
    const fieldPath = path ? `${path}.${name}` : name;
    if (value === null) continue;
    if (Array.isArray(value)) {
      value.forEach((element, i) => {
        if (Array.isArray(element) || element === null) {
          throw new SdserveError('SDS_ERR_CONFIG',
            `${source}: ${quoted(`${fieldPath}[${i}]`, '')}: expected a value or object, found ${jsonKind(element)}`);
        }
        fields.push({ name, value: toValue(element, source, `${fieldPath}[${i}]`), inList: true });
      });
    } else {
      fields.push({ name, value: toValue(value, source, fieldPath), inList: false });
    }
  }
  return { kind: 'message', fields };
}

function toValue(value: unknown, source: string, path: string): PbtxtValue {
  if (isPlainObject(value)) return objectToMessage(value, source, path);
  if (typeof value === 'string') return { kind: 'string', value };
  if (typeof value === 'boolean') return { kind: 'identifier', value: String(value) };
  if (typeof value === 'number' && Number.isInteger(value)) return { kind: 'integer', value: BigInt(value) };
  if (typeof value === 'number') return { kind: 'float', value };
  throw new SdserveError('SDS_ERR_CONFIG', `${source}: ${quoted(path, '')}: expected a JSON value, found ${jsonKind(value)}`);
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function jsonKind(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return `a ${typeof value}`;
}

export interface MapEntryJson {
  key: unknown;
  value: unknown;
}

const TRUE_NAMES = new Set(['true', 'True', 't']);
const FALSE_NAMES = new Set(['false', 'False', 'f']);

/**
 * A parsed value as protobuf JSON, without the schema: a field written more than once, or in
 * `[...]`, becomes an array; text-format booleans (`True`, `t`) become JSON booleans; other
 * identifiers (enum names) stay strings.
 */
export function valueToJson(value: PbtxtValue): unknown {
  switch (value.kind) {
    case 'message': {
      const object: Record<string, unknown> = {};
      const repeated = new Set(value.fields.filter((f, i) => f.inList || value.fields.findIndex((g) => g.name === f.name) !== i).map((f) => f.name));
      for (const field of value.fields) {
        const json = valueToJson(field.value);
        if (repeated.has(field.name)) object[field.name] = [...((object[field.name] as unknown[] | undefined) ?? []), json];
        else object[field.name] = json;
      }
      return object;
    }
    case 'integer': return Number.isSafeInteger(Number(value.value)) ? Number(value.value) : String(value.value);
    case 'float': return value.value;
    case 'string': return value.value;
    default: return TRUE_NAMES.has(value.value) ? true : FALSE_NAMES.has(value.value) ? false : value.value;
  }
}
