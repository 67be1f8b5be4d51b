/**
 * The HTTP/REST inference wire form (KServe v2 with Triton's binary tensor data extension) <->
 * the core's InferRequest / InferResponse. The header has already been JSON-parsed and checked
 * against `inferRequestSchema`; this module checks the tensors and consumes the extension's
 * parameters (`binary_data_size`, `binary_data`, `binary_data_output`), passing the rest on.
 */
import type {
  InferRequest, InferResponse, KServeDatatype, Parameters, RequestedOutput, Tensor,
} from '../../core/types.js';
import { parseBoolean } from '../../core/booleans.js';
import { invalidArg, quoted, SdserveError } from '../../errors.js';
import { BinarySectionReader, tensorBytesProblem } from '../binary-tensor.js';
import { decodeJsonTensorData, encodeJsonTensorData, isBinaryOnly, type JsonElement } from '../json-tensor.js';

export interface WireInput {
  name: string;
  shape: number[];
  datatype: KServeDatatype;
  parameters?: Parameters;
  data?: unknown;
}

export interface WireRequestedOutput {
  name: string;
  parameters?: Parameters;
}

export interface WireInferRequest {
  id?: string;
  parameters?: Parameters;
  inputs: WireInput[];
  outputs?: WireRequestedOutput[];
}

/** How each output goes back: binary or JSON. */
export interface OutputFormat {
  binaryByDefault: boolean;
  binaryByName: ReadonlyMap<string, boolean>;
}

export interface DecodedInferRequest {
  request: InferRequest;
  format: OutputFormat;
}

export interface EncodedInferResponse {
  body: Buffer;
  /** Set when binary tensors follow the JSON: its length, for `Inference-Header-Content-Length`. */
  headerLength?: number;
}

const unsupported = (message: string) => new SdserveError('SDS_ERR_UNSUPPORTED', message);

/** `params` without `key`; undefined when nothing is left. */
function without(params: Parameters | undefined, key: string): Parameters | undefined {
  if (params === undefined) return undefined;
  const { [key]: _dropped, ...rest } = params;
  return Object.keys(rest).length > 0 ? rest : undefined;
}

function optionalBool(params: Parameters | undefined, key: string, where: string): boolean | undefined {
  const value = params?.[key];
  if (value === undefined) return undefined;
  const parsed = parseBoolean(value);
  if (parsed !== undefined) return parsed;
  throw invalidArg(`${where}: parameter ${quoted(key, "'")} must be a boolean (true or false), got ${quoted(value)}`);
}

function decodeInput(input: WireInput, reader: BinarySectionReader): Tensor {
  const what = `input ${quoted(input.name, "'")}`;
  if (input.parameters?.shared_memory_region !== undefined) {
    throw unsupported(`${what}: shared memory inputs are not supported`);
  }
  const size = input.parameters?.binary_data_size;
  let data: Buffer;
  if (size !== undefined) {
    if (input.data !== undefined) throw invalidArg(`${what} has both "data" and binary_data_size`);
    data = reader.take(input.name, size);
    const problem = tensorBytesProblem(what, input.datatype, input.shape, data);
    if (problem !== undefined) throw invalidArg(problem);
  } else {
    if (input.data === undefined) throw invalidArg(`${what} has neither "data" nor binary_data_size`);
    data = decodeJsonTensorData(input.name, input.datatype, input.shape, input.data);
  }
  const parameters = without(input.parameters, 'binary_data_size');
  return { name: input.name, datatype: input.datatype, shape: input.shape, data, ...(parameters && { parameters }) };
}

function decodeRequestedOutput(output: WireRequestedOutput): RequestedOutput {
  const what = `requested output ${quoted(output.name, "'")}`;
  if (output.parameters?.shared_memory_region !== undefined) {
    throw unsupported(`${what}: shared memory outputs are not supported`);
  }
  if (output.parameters?.classification !== undefined) {
    throw unsupported(`${what}: the classification extension is not supported`);
  }
  const parameters = without(output.parameters, 'binary_data');
  return { name: output.name, ...(parameters && { parameters }) };
}

/**
 * Decodes a parsed inference request header plus the binary data after it.
 * Throws SDS_ERR_INVALID_ARG / SDS_ERR_UNSUPPORTED naming the tensor or parameter at fault.
 */
export function decodeInferRequest(
  wire: WireInferRequest, binary: Buffer, modelName: string, modelVersion?: string,
): DecodedInferRequest {
  // 1. inputs, taking binary sections in input order
  const reader = new BinarySectionReader(binary);
  const seen = new Set<string>();
  const inputs = wire.inputs.map((input) => {
    if (seen.has(input.name)) throw invalidArg(`input ${quoted(input.name, "'")} appears more than once`);
    seen.add(input.name);
    return decodeInput(input, reader);
  });
  reader.finish();
  // 2. requested outputs and how each goes back
  const binaryByName = new Map<string, boolean>();
  for (const output of wire.outputs ?? []) {
    const binaryData = optionalBool(output.parameters, 'binary_data', `requested output ${quoted(output.name, "'")}`);
    if (binaryData !== undefined) binaryByName.set(output.name, binaryData);
  }
  const binaryByDefault = optionalBool(wire.parameters, 'binary_data_output', 'request') ?? false;
  // 3. the core's request: protocol parameters consumed, the rest passed through
  const request: InferRequest = {
    model_name: modelName,
    inputs,
    parameters: without(wire.parameters, 'binary_data_output') ?? {},
  };
  if (modelVersion !== undefined && modelVersion !== '') request.model_version = modelVersion;
  if (wire.id !== undefined) request.id = wire.id;
  if (wire.outputs !== undefined) request.outputs = wire.outputs.map(decodeRequestedOutput);
  return { request, format: { binaryByDefault, binaryByName } };
}

/** Whether `output` goes back as binary; FP16/BF16 always do, having no JSON form. */
export function wantsBinary(format: OutputFormat, name: string, datatype: KServeDatatype): boolean {
  return isBinaryOnly(datatype) || (format.binaryByName.get(name) ?? format.binaryByDefault);
}

interface WireOutput {
  name: string;
  datatype: KServeDatatype;
  shape: number[];
  parameters?: Parameters;
  data?: JsonElement[];
}

/**
 * Encodes a core response: the JSON object, then the binary outputs in output order.
 * `requestId` is echoed when the core did not set an id itself.
 */
export function encodeInferResponse(
  response: InferResponse, format: OutputFormat, requestId?: string,
): EncodedInferResponse {
  const chunks: Buffer[] = [];
  const outputs = response.outputs.map((tensor): WireOutput => {
    const { name, datatype, shape, data } = tensor;
    if (!wantsBinary(format, name, datatype)) {
      const json = encodeJsonTensorData(name, datatype, shape, data);
      return { name, datatype, shape, ...(tensor.parameters && { parameters: tensor.parameters }), data: json };
    }
    const problem = tensorBytesProblem(`output '${name}'`, datatype, shape, data);
    if (problem !== undefined) throw new SdserveError('SDS_ERR_INTERNAL', problem);
    chunks.push(data);
    return { name, datatype, shape, parameters: { ...tensor.parameters, binary_data_size: data.length } };
  });
  const id = response.id ?? requestId;
  const header = Buffer.from(JSON.stringify({
    ...(id !== undefined && { id }),
    model_name: response.model_name,
    model_version: response.model_version,
    ...(response.parameters && { parameters: response.parameters }),
    outputs,
  }));
  if (chunks.length === 0) return { body: header };
  return { body: Buffer.concat([header, ...chunks]), headerLength: header.length };
}
