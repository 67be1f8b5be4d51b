/**
 * JSON tensor data (KServe v2 `data`) <-> raw little-endian bytes. JSON data may be flat or
 * nested row-major; BYTES elements are strings (UTF-8) or `{"b64": "..."}` objects. FP16 and
 * BF16 have no JSON form: they travel only as binary data.
 */
import { DATATYPE_SIZE, type KServeDatatype } from '../core/types.js';
import { invalidArg, quoted, SdserveError } from '../errors.js';
import {
  elementCount, joinBytesElements, shapeString, splitBytesElements, tensorBytesProblem,
} from './binary-tensor.js';

export type JsonElement = number | boolean | string | { b64: string };

type Writer = (buf: Buffer, offset: number, value: number) => void;

interface NumericCodec {
  min: number;
  max: number;
  integer: boolean;
  write: Writer;
  read: (buf: Buffer, offset: number) => number;
}

const int = (min: number, max: number, write: Writer, read: NumericCodec['read']): NumericCodec => (
  { min, max, integer: true, write, read }
);
const float = (write: Writer, read: NumericCodec['read']): NumericCodec => (
  { min: -Infinity, max: Infinity, integer: false, write, read }
);

// 64-bit integers: JSON numbers are doubles, so the upper bounds are the largest doubles in range.
const NUMERIC: Partial<Record<KServeDatatype, NumericCodec>> = {
  UINT8: int(0, 0xff, (b, o, v) => b.writeUInt8(v, o), (b, o) => b.readUInt8(o)),
  UINT16: int(0, 0xffff, (b, o, v) => b.writeUInt16LE(v, o), (b, o) => b.readUInt16LE(o)),
  UINT32: int(0, 0xffffffff, (b, o, v) => b.writeUInt32LE(v, o), (b, o) => b.readUInt32LE(o)),
  UINT64: int(0, 2 ** 64 - 2048, (b, o, v) => b.writeBigUInt64LE(BigInt(v), o),
    (b, o) => Number(b.readBigUInt64LE(o))),
  INT8: int(-0x80, 0x7f, (b, o, v) => b.writeInt8(v, o), (b, o) => b.readInt8(o)),
  INT16: int(-0x8000, 0x7fff, (b, o, v) => b.writeInt16LE(v, o), (b, o) => b.readInt16LE(o)),
  INT32: int(-0x80000000, 0x7fffffff, (b, o, v) => b.writeInt32LE(v, o), (b, o) => b.readInt32LE(o)),
  INT64: int(-(2 ** 63), 2 ** 63 - 1024, (b, o, v) => b.writeBigInt64LE(BigInt(v), o),
    (b, o) => Number(b.readBigInt64LE(o))),
  FP32: float((b, o, v) => b.writeFloatLE(v, o), (b, o) => b.readFloatLE(o)),
  FP64: float((b, o, v) => b.writeDoubleLE(v, o), (b, o) => b.readDoubleLE(o)),
};

const BINARY_ONLY: ReadonlySet<KServeDatatype> = new Set(['FP16', 'BF16']);
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** True for datatypes that have no JSON form (FP16, BF16). */
export function isBinaryOnly(datatype: KServeDatatype): boolean {
  return BINARY_ONLY.has(datatype);
}

/**
 * Flattens `data` row-major. Flat data only needs the right element count; nested data must
 * also be rectangular and nest exactly as `shape` says.
 */
function flatten(name: string, shape: readonly number[], data: unknown): unknown[] {
  if (!Array.isArray(data)) {
    throw invalidArg(`input ${quoted(name, "'")}: "data" must be an array, got ${quoted(data)}`);
  }
  const nested = data.some((item) => Array.isArray(item));
  const flat = nested ? flattenNested(name, shape, data) : data;
  const count = elementCount(shape);
  if (flat.length !== count) {
    throw invalidArg(`input ${quoted(name, "'")} has ${flat.length} elements but shape ${shapeString(shape)} needs ${count}`);
  }
  return flat;
}

function flattenNested(name: string, shape: readonly number[], data: unknown[]): unknown[] {
  const dims: number[] = [];
  for (let level: unknown = data; Array.isArray(level); level = level[0]) dims.push(level.length);
  const mismatch = () => invalidArg(
    `unexpected shape for input ${quoted(name, "'")}: data is nested as ${shapeString(dims)} but shape is ${shapeString(shape)}`,
  );
  if (dims.length !== shape.length || dims.some((d, i) => d !== shape[i])) throw mismatch();
  const flat: unknown[] = [];
  const walk = (level: unknown, depth: number): void => {
    const leaf = depth === dims.length;
    if (leaf !== !Array.isArray(level) || (!leaf && (level as unknown[]).length !== dims[depth])) {
      throw invalidArg(`unexpected shape for input ${quoted(name, "'")}: nested data is ragged, shape is ${shapeString(shape)}`);
    }
    if (leaf) flat.push(level);
    else for (const item of level as unknown[]) walk(item, depth + 1);
  };
  walk(data, 0);
  return flat;
}

function bytesElement(name: string, index: number, value: unknown): Buffer {
  if (typeof value === 'string') return Buffer.from(value, 'utf8');
  const b64 = (value as { b64?: unknown } | null)?.b64;
  if (typeof b64 === 'string' && BASE64.test(b64) && b64.length % 4 !== 1) {
    return Buffer.from(b64, 'base64');
  }
  throw invalidArg(
    `input ${quoted(name, "'")} element ${index}: expected a string or {"b64": "<base64>"} for BYTES, got ${quoted(value)}`,
  );
}

/**
 * Converts the JSON `data` of input `name` into its raw bytes, checking it against `shape`.
 * Throws SDS_ERR_INVALID_ARG naming the input and the element at fault.
 */
export function decodeJsonTensorData(
  name: string, datatype: KServeDatatype, shape: readonly number[], data: unknown,
): Buffer {
  if (isBinaryOnly(datatype)) {
    throw invalidArg(
      `input ${quoted(name, "'")}: datatype ${datatype} has no JSON form; send it as binary data (parameters.binary_data_size)`,
    );
  }
  const flat = flatten(name, shape, data);
  if (datatype === 'BYTES') return joinBytesElements(flat.map((v, i) => bytesElement(name, i, v)));
  if (datatype === 'BOOL') {
    return Buffer.from(flat.map((v, i) => {
      if (typeof v !== 'boolean') {
        throw invalidArg(`input ${quoted(name, "'")} element ${i}: expected true or false for BOOL, got ${quoted(v)}`);
      }
      return v ? 1 : 0;
    }));
  }
  const codec = NUMERIC[datatype] as NumericCodec;
  const size = DATATYPE_SIZE[datatype];
  const out = Buffer.alloc(flat.length * size);
  flat.forEach((v, i) => {
    const ok = typeof v === 'number' && (codec.integer
      ? Number.isInteger(v) && v >= codec.min && v <= codec.max
      : Number.isFinite(v));
    if (!ok) {
      const want = codec.integer ? `an integer in [${codec.min}, ${codec.max}]` : 'a finite number';
      throw invalidArg(`input ${quoted(name, "'")} element ${i}: expected ${want} for ${datatype}, got ${quoted(v)}`);
    }
    codec.write(out, i * size, v);
  });
  return out;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

function bytesToJson(element: Buffer): JsonElement {
  try {
    return utf8.decode(element);
  } catch {
    return { b64: element.toString('base64') };
  }
}

/**
 * The flat JSON `data` of output `name`. BYTES elements become strings when they are valid UTF-8
 * and `{"b64": ...}` otherwise; 64-bit integers beyond 2^53 lose precision (JSON numbers).
 * Throws SDS_ERR_INTERNAL when the bytes do not fit the shape (a core bug, not the client's).
 */
export function encodeJsonTensorData(
  name: string, datatype: KServeDatatype, shape: readonly number[], data: Buffer,
): JsonElement[] {
  const problem = tensorBytesProblem(`output ${quoted(name, "'")}`, datatype, shape, data);
  if (problem !== undefined) throw new SdserveError('SDS_ERR_INTERNAL', problem);
  if (isBinaryOnly(datatype)) {
    throw new SdserveError('SDS_ERR_INTERNAL', `output ${quoted(name, "'")}: datatype ${datatype} has no JSON form`);
  }
  if (datatype === 'BYTES') return (splitBytesElements(data) as Buffer[]).map(bytesToJson);
  if (datatype === 'BOOL') return Array.from(data, (byte) => byte !== 0);
  const codec = NUMERIC[datatype] as NumericCodec;
  const size = DATATYPE_SIZE[datatype];
  const out = new Array<number>(data.length / size);
  for (let i = 0; i < out.length; i++) out[i] = codec.read(data, i * size);
  return out;
}
