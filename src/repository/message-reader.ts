import { quoted, SdserveError } from '../errors.js';
import type { PbtxtField, PbtxtMessage, PbtxtValue, SourcePosition } from './pbtxt.js';

/** Where a tree came from: JSON relaxes scalar spelling the way protobuf's JSON mapping does. */
export type TreeOrigin = 'pbtxt' | 'json';

export interface ReaderContext {
  file: string;
  origin: TreeOrigin;
}

export interface MessageSchema {
  /** Fields this reader maps. */
  readonly known: readonly string[];
  /** Fields of the protobuf message that sdserve accepts and does not use. */
  readonly ignored?: readonly string[];
}

export interface IntRange {
  min?: number;
  max?: number;
}

export interface MapEntry {
  key: PbtxtValue | undefined;
  value: MessageReader | undefined;
  path: string;
  position?: SourcePosition;
}

/** Sets a map entry as an own property, so a key such as "__proto__" stays plain data. */
export function setMapEntry<T>(map: Record<string, T>, key: string, value: T): void {
  Object.defineProperty(map, key, { value, enumerable: true, writable: true, configurable: true });
}

const TRUE_SPELLINGS = new Set(['true', 'True', 't']);
const FALSE_SPELLINGS = new Set(['false', 'False', 'f']);

/** `max_batch_size` -> `maxBatchSize`, the JSON name protobuf also accepts. */
const jsonName = (protoName: string) => protoName.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());

/** "file:line:column: path: message", or "file: path: message" without a position. */
export function configError(
  context: ReaderContext, path: string, message: string, position?: SourcePosition,
): SdserveError {
  const where = position ? `${context.file}:${position.line}:${position.column}` : context.file;
  return new SdserveError('SDS_ERR_CONFIG', `${where}: ${path ? `${quoted(path, '')}: ` : ''}${message}`);
}

export function describeValue(value: PbtxtValue): string {
  switch (value.kind) {
    case 'message': return 'a message';
    case 'string': return `string ${quoted(value.value)}`;
    case 'identifier': return quoted(value.value, "'");
    default: return `number ${String(value.value)}`;
  }
}

/**
 * Typed, checked access to one message of the tree against what sdserve knows of it. An unknown
 * field name is reported at construction, with the closest known name when one is near.
 */
export class MessageReader {
  private readonly byName = new Map<string, PbtxtField[]>();

  constructor(
    readonly node: PbtxtMessage,
    readonly path: string,
    readonly context: ReaderContext,
    schema: MessageSchema,
  ) {
    const accepted = [...schema.known, ...(schema.ignored ?? [])];
    const aliases = new Map(accepted.map((name) => [name, name]));
    if (context.origin === 'json') for (const name of accepted) aliases.set(jsonName(name), name);

    for (const field of node.fields) {
      const name = aliases.get(field.name);
      if (name === undefined) {
        throw this.fail(`unknown field ${quoted(field.name, "'")}${suggestion(field.name, accepted)}`, field.position);
      }
      this.byName.set(name, [...(this.byName.get(name) ?? []), field]);
    }
  }

  fail(message: string, position: SourcePosition | undefined = this.node.position): SdserveError {
    return configError(this.context, this.path, message, position);
  }

  childPath(name: string, index?: number): string {
    const base = this.path ? `${this.path}.${name}` : name;
    return index === undefined ? base : `${base}[${index}]`;
  }

  /** Whether the field is written at all, known or ignored. */
  has(name: string): boolean {
    return this.byName.has(name);
  }

  position(name: string): SourcePosition | undefined {
    return this.byName.get(name)?.[0].position;
  }

  string(name: string, fallback = ''): string {
    const value = this.singular(name);
    return value === undefined ? fallback : this.asString(value, this.childPath(name));
  }

  bool(name: string, fallback = false): boolean {
    const value = this.singular(name);
    return value === undefined ? fallback : this.asBool(value, this.childPath(name));
  }

  int(name: string, fallback: number, range: IntRange = {}): number {
    const value = this.singular(name);
    return value === undefined ? fallback : this.asInt(value, this.childPath(name), range);
  }

  enumValue<T extends string>(name: string, values: readonly T[], fallback: T): T {
    const value = this.singular(name);
    return value === undefined ? fallback : this.asEnum(value, this.childPath(name), values);
  }

  intList(name: string, range: IntRange = {}): number[] {
    return this.values(name).map(({ value, path }) => this.asInt(value, path, range));
  }

  /** Every value of a repeated field with its path, for checks the typed getters do not make. */
  values(name: string): Array<{ value: PbtxtValue; path: string }> {
    return this.repeated(name).map((field, i) => ({ value: field.value, path: this.childPath(name, i) }));
  }

  /** Members of a protobuf `oneof`: at most one may be set. */
  oneOf(names: readonly string[]): void {
    const set = names.filter((name) => this.has(name));
    if (set.length > 1) {
      throw configError(this.context, this.childPath(set[1]),
        `only one of ${names.join(', ')} may be set, found both ${set[0]} and ${set[1]}`, this.position(set[1]));
    }
  }

  message(name: string, schema: MessageSchema): MessageReader | undefined {
    const value = this.singular(name);
    return value === undefined ? undefined : this.asMessage(value, this.childPath(name), schema);
  }

  messages(name: string, schema: MessageSchema): MessageReader[] {
    return this.repeated(name).map((field, i) => this.asMessage(field.value, this.childPath(name, i), schema));
  }

  /**
   * A protobuf map field. The text format writes it as repeated `{ key: .. value: {..} }`
   * entries; protobuf JSON writes it as one object keyed by the map key.
   */
  mapEntries(name: string, valueSchema: MessageSchema): MapEntry[] {
    if (this.context.origin === 'json') {
      const value = this.singular(name);
      if (value === undefined) return [];
      if (value.kind !== 'message') throw this.fail(`${name}: expected an object, found ${describeValue(value)}`);
      return value.fields.map((entry) => {
        const path = `${this.childPath(name)}["${entry.name}"]`;  // escaped once, by configError
        return {
          key: { kind: 'string', value: entry.name },
          value: this.asMessage(entry.value, path, valueSchema),
          path,
        };
      });
    }
    return this.messages(name, { known: ['key', 'value'] }).map((entry) => {
      const keyField = entry.byName.get('key');
      if (keyField && keyField.length > 1) throw entry.fail("field 'key' is set more than once", keyField[1].position);
      return {
        key: keyField?.[0].value,
        value: entry.message('value', valueSchema),
        path: entry.path,
        position: entry.node.position,
      };
    });
  }

  asString(value: PbtxtValue, path: string): string {
    if (value.kind !== 'string') throw this.mismatch(path, 'a quoted string', value);
    return value.value;
  }

  asInt(value: PbtxtValue, path: string, range: IntRange = {}): number {
    let integer: bigint | undefined;
    if (value.kind === 'integer') integer = value.value;
    if (value.kind === 'string' && this.context.origin === 'json' && /^-?\d+$/.test(value.value)) {
      integer = BigInt(value.value);
    }
    if (integer === undefined) throw this.mismatch(path, 'an integer', value);
    const min = BigInt(range.min ?? Number.MIN_SAFE_INTEGER);
    const max = BigInt(range.max ?? Number.MAX_SAFE_INTEGER);
    if (integer < min || integer > max) {
      const bounds = range.max === undefined ? `>= ${min}` : `between ${min} and ${max}`;
      throw configError(this.context, path, `expected an integer ${bounds}, found ${quoted(String(integer), '')}`, value.position);
    }
    return Number(integer);
  }

  asBool(value: PbtxtValue, path: string): boolean {
    if (value.kind === 'identifier' && TRUE_SPELLINGS.has(value.value)) return true;
    if (value.kind === 'identifier' && FALSE_SPELLINGS.has(value.value)) return false;
    if (value.kind === 'integer' && (value.value === 0n || value.value === 1n)) return value.value === 1n;
    throw this.mismatch(path, 'true or false', value);
  }

  /** Enum by name, or by number (`values` is ordered by enum number). */
  asEnum<T extends string>(value: PbtxtValue, path: string, values: readonly T[]): T {
    const jsonName = this.context.origin === 'json' && value.kind === 'string';
    if (value.kind === 'identifier' || jsonName) {
      const found = values.find((v) => v === value.value);
      if (found !== undefined) return found;
    }
    if (value.kind === 'integer' && value.value >= 0n && value.value < BigInt(values.length)) {
      return values[Number(value.value)];
    }
    throw this.mismatch(path, `one of ${values.join(', ')}`, value);
  }

  private asMessage(value: PbtxtValue, path: string, schema: MessageSchema): MessageReader {
    if (value.kind !== 'message') throw this.mismatch(path, "a message '{ ... }'", value);
    return new MessageReader(value, path, this.context, schema);
  }

  private mismatch(path: string, expected: string, value: PbtxtValue): SdserveError {
    return configError(this.context, path, `expected ${expected}, found ${describeValue(value)}`, value.position);
  }

  private repeated(name: string): PbtxtField[] {
    return this.byName.get(name) ?? [];
  }

  /** The value of a non-repeated field; the text format rejects setting one twice or as a list. */
  private singular(name: string): PbtxtValue | undefined {
    const fields = this.byName.get(name);
    if (!fields) return undefined;
    const [first, second] = fields;
    if (first.inList) {
      throw configError(this.context, this.childPath(name), 'is not a repeated field, so it cannot be a [ ] list', first.position);
    }
    if (second) {
      const { line, column } = first.position ?? { line: 0, column: 0 };
      const firstAt = first.position ? ` (first set at ${line}:${column})` : '';
      throw configError(this.context, this.childPath(name), `is set more than once${firstAt}`, second.position);
    }
    return first.value;
  }
}

/** "; did you mean 'x'?" for a name one or two edits from a known one. */
function suggestion(name: string, known: readonly string[]): string {
  let best: string | undefined;
  let bestDistance = 3;
  for (const candidate of known) {
    if (Math.abs(name.length - candidate.length) >= bestDistance) continue;  // as many edits at least
    const distance = editDistance(name, candidate);
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  return best === undefined ? `; expected one of ${known.join(', ')}` : `; did you mean '${best}'?`;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitution = previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1);
      current.push(Math.min(previous[j] + 1, current[j - 1] + 1, substitution));
    }
    previous = current;
  }
  return previous[b.length];
}
