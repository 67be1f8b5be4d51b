/**
 * The gRPC inference wire form (KServe v2 ModelInferRequest / ModelInferResponse with Triton's
 * `raw_input_contents` / `raw_output_contents`) <-> the core's InferRequest / InferResponse.
 * This is the gRPC front end's one `validateRequest`: it checks what only the wire can get
 * wrong (datatype names, shapes, byte counts, contents vs raw); the core checks the request
 * against the model's config.
 */
import {
  DATATYPE_SIZE, KSERVE_DATATYPES, type InferRequest, type InferResponse, type KServeDatatype,
  type Parameters, type RequestedOutput, type Tensor,
} from '../../core/types.js';
import { invalidArg, quoted, SdserveError } from '../../errors.js';
import { elementCount, joinBytesElements, shapeString, tensorBytesProblem } from '../binary-tensor.js';
import { checkEntryCount } from '../request-shape.js';
import type {
  WireInferInputTensor, WireInferParameter, WireModelInferRequest, WireModelInferResponse,
  WireParameters, WireTensorContents,
} from './wire-types.js';

const DATATYPES: ReadonlySet<string> = new Set(KSERVE_DATATYPES);

/** InferParameter map -> plain values. `where` names the owner in messages. */
export function decodeParameters(wire: WireParameters | undefined, where: string): Parameters {
  checkEntryCount(wire, `${where}: 'parameters'`);
  const out: Parameters = {};
  for (const [key, param] of Object.entries(wire ?? {})) {
    const choice = param.parameter_choice;
    const value = choice === undefined ? undefined : param[choice];
    if (value === undefined || value === null) {
      throw invalidArg(`${where}: parameter ${quoted(key, "'")} has no value`);
    }
    out[key] = value;
  }
  return out;
}

/**
 * Plain values -> InferParameter map: safe integers travel as int64_param, other numbers as
 * double_param.
 */
export function encodeParameters(params: Parameters | undefined): WireParameters {
  const out: WireParameters = {};
  for (const [key, value] of Object.entries(params ?? {})) {
    if (typeof value === 'boolean') out[key] = { bool_param: value };
    else if (typeof value === 'string') out[key] = { string_param: value };
    else out[key] = Number.isSafeInteger(value) ? { int64_param: value } : { double_param: value };
  }
  return out;
}

type ContentsField = keyof WireTensorContents;

interface ContentsCodec {
  field: ContentsField;
  /** Writes one element; returns false when the value is out of the datatype's range. */
  write: (buf: Buffer, offset: number, value: number | boolean) => boolean;
}

const inRange = (min: number, max: number) => (v: number) => Number.isInteger(v) && v >= min && v <= max;
const intWriter = (ok: (v: number) => boolean, write: (b: Buffer, o: number, v: number) => void) => (
  (b: Buffer, o: number, v: number | boolean) => {
    if (typeof v !== 'number' || !ok(v)) return false;
    write(b, o, v);
    return true;
  }
);

// 64-bit contents arrive as numbers (proto-loader `longs: Number`), so values near the top of
// the range round up past it; they are written as the largest representable value.
const INT64_MAX = 2n ** 63n - 1n;
const UINT64_MAX = 2n ** 64n - 1n;
const clampBig = (v: number, max: bigint) => { const big = BigInt(v); return big > max ? max : big; };

// Which typed field carries each datatype (FP16, BF16 have none; BYTES is handled apart).
const CONTENTS: Partial<Record<KServeDatatype, ContentsCodec>> = {
  BOOL: { field: 'bool_contents', write: (b, o, v) => { b[o] = v ? 1 : 0; return true; } },
  INT8: { field: 'int_contents', write: intWriter(inRange(-0x80, 0x7f), (b, o, v) => b.writeInt8(v, o)) },
  INT16: { field: 'int_contents', write: intWriter(inRange(-0x8000, 0x7fff), (b, o, v) => b.writeInt16LE(v, o)) },
  INT32: { field: 'int_contents', write: intWriter(inRange(-0x80000000, 0x7fffffff), (b, o, v) => b.writeInt32LE(v, o)) },
  INT64: { field: 'int64_contents', write: intWriter(inRange(-(2 ** 63), 2 ** 63), (b, o, v) => b.writeBigInt64LE(clampBig(v, INT64_MAX), o)) },
  UINT8: { field: 'uint_contents', write: intWriter(inRange(0, 0xff), (b, o, v) => b.writeUInt8(v, o)) },
  UINT16: { field: 'uint_contents', write: intWriter(inRange(0, 0xffff), (b, o, v) => b.writeUInt16LE(v, o)) },
  UINT32: { field: 'uint_contents', write: intWriter(inRange(0, 0xffffffff), (b, o, v) => b.writeUInt32LE(v, o)) },
  UINT64: { field: 'uint64_contents', write: intWriter(inRange(0, 2 ** 64), (b, o, v) => b.writeBigUInt64LE(clampBig(v, UINT64_MAX), o)) },
  FP32: { field: 'fp32_contents', write: (b, o, v) => { b.writeFloatLE(v as number, o); return true; } },
  FP64: { field: 'fp64_contents', write: (b, o, v) => { b.writeDoubleLE(v as number, o); return true; } },
};

function hasContents(contents: WireTensorContents | null): contents is WireTensorContents {
  return contents !== null && Object.values(contents).some((list) => Array.isArray(list) && list.length > 0);
}

/** The raw little-endian bytes of an input given by its typed `contents`. */
export function contentsToRaw(
  name: string, datatype: KServeDatatype, shape: readonly number[], contents: WireTensorContents,
): Buffer {
  const what = `input ${quoted(name, "'")}`;
  const field: ContentsField | undefined = datatype === 'BYTES' ? 'bytes_contents' : CONTENTS[datatype]?.field;
  if (field === undefined) {
    throw invalidArg(`${what}: datatype ${datatype} has no typed contents; send it in raw_input_contents`);
  }
  const stray = (Object.keys(contents) as ContentsField[])
    .find((key) => key !== field && Array.isArray(contents[key]) && contents[key].length > 0);
  if (stray !== undefined) {
    throw invalidArg(`${what}: datatype ${datatype} is carried by contents.${field}, but contents.${stray} is set`);
  }
  const values = contents[field];
  const count = elementCount(shape);
  if (values.length !== count) {
    throw invalidArg(`${what} has ${values.length} elements in contents.${field} but shape ${shapeString(shape)} needs ${count}`);
  }
  if (datatype === 'BYTES') return joinBytesElements(values as Buffer[]);
  const codec = CONTENTS[datatype] as ContentsCodec;
  const size = DATATYPE_SIZE[datatype];
  const out = Buffer.alloc(count * size);
  (values as Array<number | boolean>).forEach((value, i) => {
    if (!codec.write(out, i * size, value)) {
      throw invalidArg(`${what} element ${i}: ${String(value)} is out of range for ${datatype}`);
    }
  });
  return out;
}

function decodeInput(input: WireInferInputTensor, raw: Buffer | undefined): Tensor {
  const what = `input ${quoted(input.name, "'")}`;
  if (!DATATYPES.has(input.datatype)) {
    throw invalidArg(`${what}: unknown datatype ${quoted(input.datatype, "'")}, expected one of ${KSERVE_DATATYPES.join(', ')}`);
  }
  const datatype = input.datatype as KServeDatatype;
  if (input.shape.some((dim) => !Number.isSafeInteger(dim) || dim < 0)) {
    throw invalidArg(`${what}: shape ${shapeString(input.shape)} must hold non-negative integers`);
  }
  const parameters = decodeParameters(input.parameters, what);
  if (parameters.shared_memory_region !== undefined) {
    throw new SdserveError('SDS_ERR_UNSUPPORTED', `${what}: shared memory inputs are not supported`);
  }
  let data: Buffer;
  if (raw !== undefined) {
    data = raw;
    const problem = tensorBytesProblem(what, datatype, input.shape, data);
    if (problem !== undefined) throw invalidArg(problem);
  } else if (hasContents(input.contents)) {
    data = contentsToRaw(input.name, datatype, input.shape, input.contents);
  } else {
    throw invalidArg(`${what} has no data: set its contents or send raw_input_contents`);
  }
  return {
    name: input.name, datatype, shape: input.shape, data,
    ...(Object.keys(parameters).length > 0 && { parameters }),
  };
}

/** ModelInferRequest -> InferRequest; throws SDS_ERR_INVALID_ARG naming the field at fault. */
export function decodeInferRequest(wire: WireModelInferRequest): InferRequest {
  // 1. raw contents, when used, come one per input and exclude typed contents
  const raw = wire.raw_input_contents;
  if (raw.length > 0) {
    if (raw.length !== wire.inputs.length) {
      throw invalidArg(`expected ${wire.inputs.length} raw_input_contents (one per input), got ${raw.length}`);
    }
    const typed = wire.inputs.find((input) => hasContents(input.contents));
    if (typed !== undefined) {
      throw invalidArg(`input ${quoted(typed.name, "'")}: contents must not be set when raw_input_contents is used`);
    }
  }
  // 2. tensors, requested outputs and parameters
  const inputs = wire.inputs.map((input, i) => decodeInput(input, raw.length > 0 ? raw[i] : undefined));
  const outputs = wire.outputs.map((output): RequestedOutput => {
    const parameters = decodeParameters(output.parameters, `output ${quoted(output.name, "'")}`);
    return { name: output.name, ...(Object.keys(parameters).length > 0 && { parameters }) };
  });
  return {
    ...(wire.id !== '' && { id: wire.id }),
    model_name: wire.model_name,
    ...(wire.model_version !== '' && { model_version: wire.model_version }),
    inputs,
    ...(outputs.length > 0 && { outputs }),
    parameters: decodeParameters(wire.parameters, 'request'),
  };
}

/** InferResponse -> ModelInferResponse with every output's bytes in raw_output_contents. */
export function encodeInferResponse(response: InferResponse): WireModelInferResponse {
  return {
    model_name: response.model_name,
    model_version: response.model_version,
    id: response.id ?? '',
    parameters: encodeParameters(response.parameters),
    outputs: response.outputs.map((t) => ({
      name: t.name, datatype: t.datatype, shape: t.shape, parameters: encodeParameters(t.parameters),
    })),
    raw_output_contents: response.outputs.map((t) => t.data),
  };
}
