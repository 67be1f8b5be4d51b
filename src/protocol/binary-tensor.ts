/**
 * Raw tensor bytes and Triton's binary tensor data extension (HTTP): a body is a JSON header of
 * `Inference-Header-Content-Length` bytes followed by the binary tensors, in the order of the
 * tensors that carry `parameters.binary_data_size`. Tensor bytes are little-endian, row-major;
 * a BYTES element is a 4-byte little-endian length followed by its bytes.
 */
import { DATATYPE_SIZE, type KServeDatatype } from '../core/types.js';
import { invalidArg, quoted } from '../errors.js';

/** Elements a shape holds; `[]` (a scalar) holds one. */
export function elementCount(shape: readonly number[]): number {
  let count = 1;
  for (const dim of shape) count *= dim;
  return count;
}

export function shapeString(shape: readonly number[]): string {
  return `[${shape.join(',')}]`;
}

/** Splits serialized BYTES data into its elements; undefined when a length runs past the end. */
export function splitBytesElements(data: Buffer): Buffer[] | undefined {
  const elements: Buffer[] = [];
  let offset = 0;
  while (offset < data.length) {
    if (offset + 4 > data.length) return undefined;
    const length = data.readUInt32LE(offset);
    offset += 4;
    if (offset + length > data.length) return undefined;
    elements.push(data.subarray(offset, offset + length));
    offset += length;
  }
  return elements;
}

/** Serializes BYTES elements: each a 4-byte little-endian length then its bytes. */
export function joinBytesElements(elements: readonly Uint8Array[]): Buffer {
  let total = 0;
  for (const element of elements) total += 4 + element.length;
  const out = Buffer.allocUnsafe(total);
  let offset = 0;
  for (const element of elements) {
    out.writeUInt32LE(element.length, offset);
    out.set(element, offset + 4);
    offset += 4 + element.length;
  }
  return out;
}

/**
 * Why `data` cannot be a tensor of `datatype` and `shape`, or undefined when it can.
 * `what` names the tensor in the message, e.g. `input 'x'`.
 */
export function tensorBytesProblem(
  what: string, datatype: KServeDatatype, shape: readonly number[], data: Buffer,
): string | undefined {
  const count = elementCount(shape);
  if (datatype === 'BYTES') {
    const elements = splitBytesElements(data);
    if (elements === undefined) {
      return `${what} has malformed BYTES data: an element length runs past the end of its ${data.length} bytes`;
    }
    if (elements.length !== count) {
      return `${what} has ${elements.length} elements but shape ${shapeString(shape)} needs ${count}`;
    }
    return undefined;
  }
  const needed = count * DATATYPE_SIZE[datatype];
  if (data.length !== needed) {
    return `${what} has ${data.length} bytes of ${datatype} data but shape ${shapeString(shape)} needs ${needed}`;
  }
  return undefined;
}

/**
 * Parses the `Inference-Header-Content-Length` header against a body of `bodyLength` bytes.
 * Absent: undefined (the whole body is JSON).
 */
export function parseHeaderLength(
  value: string | string[] | undefined, bodyLength: number,
): number | undefined {
  if (value === undefined) return undefined;
  if (Array.isArray(value) || !/^\d+$/.test(value.trim())) {
    throw invalidArg(`Inference-Header-Content-Length must be one non-negative integer, got ${quoted(String(value), "'")}`);
  }
  const length = Number(value.trim());
  if (length === 0) throw invalidArg('Inference-Header-Content-Length is 0: the JSON header is missing');
  if (length > bodyLength) {
    throw invalidArg(
      `Inference-Header-Content-Length ${length} exceeds the request body of ${bodyLength} bytes`,
    );
  }
  return length;
}

/** Splits a body into its JSON header and the binary tensor data after it. */
export function splitInferBody(
  body: Buffer, headerLength: number | undefined,
): { header: Buffer; binary: Buffer } {
  if (headerLength === undefined) return { header: body, binary: body.subarray(body.length) };
  return { header: body.subarray(0, headerLength), binary: body.subarray(headerLength) };
}

/** Hands out the binary tensor data of a request in order, checking each declared size. */
export class BinarySectionReader {
  private offset = 0;

  constructor(private readonly binary: Buffer) {}

  /** The next `size` bytes, for the input `name`. */
  take(name: string, size: unknown): Buffer {
    if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) {
      throw invalidArg(
        `input ${quoted(name, "'")}: binary_data_size must be a non-negative integer, got ${quoted(size)}`,
      );
    }
    const left = this.binary.length - this.offset;
    if (size > left) {
      throw invalidArg(
        `input ${quoted(name, "'")}: binary_data_size ${size} exceeds the ${left} bytes of binary data left in the request`,
      );
    }
    const slice = this.binary.subarray(this.offset, this.offset + size);
    this.offset += size;
    return slice;
  }

  /** Throws when bytes are left over that no input claimed. */
  finish(): void {
    const left = this.binary.length - this.offset;
    if (left > 0) {
      throw invalidArg(`request has ${left} bytes of binary data that no input's binary_data_size claims`);
    }
  }
}
