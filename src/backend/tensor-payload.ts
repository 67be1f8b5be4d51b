/**
 * Tensor bytes inside a frame payload: packing request inputs (aligned, never copied) and
 * reading response outputs back as views of the received frame.
 */

import { DATATYPE_SIZE, KSERVE_DATATYPES, type KServeDatatype, type Tensor } from '../core/types.js';
import { SdserveError } from '../errors.js';
import type { TensorMeta } from './messages.js';

/** Tensors start at multiples of this, so the backend can view them in place as numpy arrays. */
export const PAYLOAD_ALIGNMENT = 64;
const ZERO_PADDING = Buffer.alloc(PAYLOAD_ALIGNMENT);
const DATATYPES: ReadonlySet<string> = new Set(KSERVE_DATATYPES);

/** Collects tensor bytes for one frame; `parts` go to `encodeFrame` as they are. */
export class PayloadBuilder {
  readonly parts: Buffer[] = [];
  private length = 0;

  add(tensor: Tensor): TensorMeta {
    const meta: TensorMeta = {
      name: tensor.name,
      datatype: tensor.datatype,
      shape: tensor.shape,
      offset: this.length,
      length: tensor.data.length,
    };
    this.parts.push(tensor.data);
    this.length += tensor.data.length;
    const padding = (PAYLOAD_ALIGNMENT - (this.length % PAYLOAD_ALIGNMENT)) % PAYLOAD_ALIGNMENT;
    if (padding > 0) {
      this.parts.push(ZERO_PADDING.subarray(0, padding));
      this.length += padding;
    }
    return meta;
  }
}

/** The tensor `meta` describes, its data a view of `payload`; throws if `meta` does not fit. */
export function tensorFromPayload(payload: Buffer, meta: TensorMeta): Tensor {
  const where = `output '${String(meta.name)}'`;
  if (typeof meta.name !== 'string' || !DATATYPES.has(meta.datatype)) {
    throw new SdserveError('SDS_ERR_BACKEND', `${where}: datatype '${String(meta.datatype)}' is not a KServe datatype`);
  }
  if (!Array.isArray(meta.shape) || !meta.shape.every((dim) => Number.isSafeInteger(dim) && dim >= 0)) {
    throw new SdserveError('SDS_ERR_BACKEND', `${where}: shape ${JSON.stringify(meta.shape)} is not a list of sizes`);
  }
  const { offset, length } = meta;
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0
    || offset + length > payload.length) {
    throw new SdserveError('SDS_ERR_BACKEND',
      `${where}: bytes [${offset}, ${offset + length}) lie outside the ${payload.length}-byte payload`);
  }
  const elementSize = DATATYPE_SIZE[meta.datatype as KServeDatatype];
  const expected = meta.shape.reduce((count, dim) => count * dim, 1) * elementSize;
  if (elementSize > 0 && length !== expected) {
    throw new SdserveError('SDS_ERR_BACKEND',
      `${where}: shape ${JSON.stringify(meta.shape)} of ${meta.datatype} needs ${expected} bytes, got ${length}`);
  }
  return {
    name: meta.name,
    datatype: meta.datatype,
    shape: meta.shape,
    data: payload.subarray(offset, offset + length),
  };
}
