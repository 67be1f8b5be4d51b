/**
 * A minimal KServe v2 HTTP infer client speaking Triton's binary tensor data extension both
 * ways: the request body is a JSON header followed by raw input tensors, the response likewise
 * carries the requested outputs as raw bytes after its JSON header.
 * Spec: Triton server docs, protocol/extension_binary_data.md.
 */
import { joinBytesElements, splitBytesElements } from '../protocol/binary-tensor.js';
import type {
  InferRequest, InferResponse, KServeDatatype, Parameters, Tensor,
} from '../core/types.js';

export const HEADER_LENGTH_HEADER = 'Inference-Header-Content-Length';

/** The server answered with a non-2xx status; `message` is its `{"error": ...}` text. */
export class InferHttpError extends Error {
  readonly status: number;

  constructor(status: number, message: string) {
    super(message);
    this.name = 'InferHttpError';
    this.status = status;
  }
}

interface WireTensorHeader {
  name: string;
  datatype: KServeDatatype;
  shape: number[];
  parameters?: Parameters;
}

interface WireResponseHeader {
  id?: string;
  model_name: string;
  model_version?: string;
  outputs?: WireTensorHeader[];
  parameters?: Parameters;
}

/** Packs strings as a BYTES tensor body: each element is a 4-byte little-endian length, then its bytes. */
export function encodeBytesElements(elements: readonly string[]): Buffer {
  return joinBytesElements(elements.map((element) => Buffer.from(element, 'utf8')));
}

/** Reverse of `encodeBytesElements`. */
export function decodeBytesElements(data: Buffer): string[] {
  const elements = splitBytesElements(data);
  if (elements === undefined) throw new RangeError('BYTES tensor: truncated element');
  return elements.map((element) => element.toString('utf8'));
}

/** Builds the binary-extension request body; returns it with the JSON header's byte length. */
export function encodeInferRequestBody(request: InferRequest): { body: Buffer; headerLength: number } {
  const header = {
    ...(request.id === undefined ? {} : { id: request.id }),
    inputs: request.inputs.map((tensor) => ({
      name: tensor.name,
      datatype: tensor.datatype,
      shape: tensor.shape,
      parameters: { ...tensor.parameters, binary_data_size: tensor.data.length },
    })),
    ...(request.outputs === undefined ? {} : {
      outputs: request.outputs.map((output) => ({
        name: output.name,
        parameters: { ...output.parameters, binary_data: true },
      })),
    }),
    ...(Object.keys(request.parameters).length === 0 ? {} : { parameters: request.parameters }),
  };
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  return {
    body: Buffer.concat([json, ...request.inputs.map((tensor) => tensor.data)]),
    headerLength: json.length,
  };
}

/** Splits a binary-extension response body into its JSON header and the outputs' raw bytes. */
export function decodeInferResponseBody(body: Buffer, headerLength: number | undefined): InferResponse {
  const jsonLength = headerLength ?? body.length;
  if (!Number.isInteger(jsonLength) || jsonLength < 0 || jsonLength > body.length) {
    throw new RangeError(
      `${HEADER_LENGTH_HEADER} is ${headerLength} but the body has ${body.length} bytes`,
    );
  }
  const header = JSON.parse(body.toString('utf8', 0, jsonLength)) as WireResponseHeader;
  let offset = jsonLength;
  const outputs: Tensor[] = (header.outputs ?? []).map((output) => {
    const { binary_data_size: size, ...parameters } = output.parameters ?? {};
    if (typeof size !== 'number') {
      throw new RangeError(`output '${output.name}' came back without binary data`);
    }
    if (offset + size > body.length) {
      throw new RangeError(`output '${output.name}' needs ${size} bytes past offset ${offset}`);
    }
    const data = body.subarray(offset, offset + size);
    offset += size;
    return { name: output.name, datatype: output.datatype, shape: output.shape, data, parameters };
  });
  return {
    ...(header.id === undefined ? {} : { id: header.id }),
    model_name: header.model_name,
    model_version: header.model_version ?? '',
    outputs,
    ...(header.parameters === undefined ? {} : { parameters: header.parameters }),
  };
}

/**
 * Sends one infer request to `{baseUrl}/v2/models/{model}[/versions/{v}]/infer`.
 * Throws `InferHttpError` when the server answers with an error status.
 */
export async function inferOverHttp(
  baseUrl: string,
  request: InferRequest,
  signal?: AbortSignal,
): Promise<InferResponse> {
  const { body, headerLength } = encodeInferRequestBody(request);
  const response = await fetch(`${modelUrl(baseUrl, request)}/infer`, {
    method: 'POST',
    headers: {
      'Content-Type': 'application/octet-stream',
      [HEADER_LENGTH_HEADER]: String(headerLength),
      // Images barely compress; compressing them would only cost the server time.
      'Accept-Encoding': 'identity',
    },
    // Buffer.concat never returns SharedArrayBuffer memory, which is all fetch's typing rules out.
    body: new Uint8Array(body.buffer as ArrayBuffer, body.byteOffset, body.length),
    signal,
  });
  const responseBody = Buffer.from(await response.arrayBuffer());
  if (!response.ok) {
    throw new InferHttpError(response.status, errorMessage(responseBody, response.statusText));
  }
  const lengthHeader = response.headers.get(HEADER_LENGTH_HEADER);
  return decodeInferResponseBody(responseBody, lengthHeader === null ? undefined : Number(lengthHeader));
}

/** `{baseUrl}/v2/models/{model}[/versions/{version}]`: the base of a model's routes. */
export function modelUrl(baseUrl: string, request: InferRequest): string {
  const model = encodeURIComponent(request.model_name);
  const version = request.model_version ? `/versions/${encodeURIComponent(request.model_version)}` : '';
  return `${baseUrl}/v2/models/${model}${version}`;
}

/** The `{"error": ...}` text of an error response, else its raw text, else the status text. */
export function errorMessage(body: Buffer, statusText: string): string {
  const text = body.toString('utf8');
  try {
    const parsed = JSON.parse(text) as { error?: unknown };
    if (typeof parsed.error === 'string') return parsed.error;
  } catch {
    // Not JSON (a proxy's HTML page, say): report the raw text below.
  }
  return text.trim() || statusText;
}
