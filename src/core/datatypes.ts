import type { TritonDataType } from '../repository/model-config-types.js';
import type { KServeDatatype } from './types.js';

/** TYPE_FP32 -> FP32, TYPE_STRING -> BYTES (model_config.proto vs the v2 protocol's names). */
export function toKServeDatatype(type: TritonDataType): KServeDatatype {
  if (type === 'TYPE_STRING') return 'BYTES';
  return type.slice('TYPE_'.length) as KServeDatatype;
}

/** BYTES -> TYPE_STRING, FP32 -> TYPE_FP32. */
export function fromKServeDatatype(type: string): TritonDataType {
  return (type === 'BYTES' ? 'TYPE_STRING' : `TYPE_${type}`) as TritonDataType;
}
