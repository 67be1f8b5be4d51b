import type { TritonDataType } from '../repository/model-config-types.js';
import { DATATYPE_SIZE, type KServeDatatype, type Tensor } from './types.js';

/** TYPE_FP32 -> FP32, TYPE_STRING -> BYTES (model_config.proto vs the v2 protocol's names). */
export function toKServeDatatype(type: TritonDataType): KServeDatatype {
  if (type === 'TYPE_STRING') return 'BYTES';
  return type.slice('TYPE_'.length) as KServeDatatype;
}

export function elementCount(shape: readonly number[]): number {
  return shape.reduce((n, d) => n * d, 1);
}

/** Number of elements in a BYTES tensor's serialized data, or -1 when the framing is broken. */
export function countBytesElements(data: Buffer): number {
  let offset = 0;
  let count = 0;
  while (offset < data.length) {
    if (offset + 4 > data.length) return -1;
    offset += 4 + data.readUInt32LE(offset);
    count += 1;
  }
  return offset === data.length ? count : -1;
}

/** Bytes the tensor's data must have, or undefined for BYTES (checked by element count). */
export function expectedByteLength(tensor: Pick<Tensor, 'datatype' | 'shape'>): number | undefined {
  const size = DATATYPE_SIZE[tensor.datatype];
  return size === 0 ? undefined : size * elementCount(tensor.shape);
}
