/**
 * The closed set of backend IPC messages (docs/backend-protocol.md, "Messages"), mirroring
 * python/sdserve_backend/messages.py, and the JSON metadata each one carries.
 */

import type { KServeDatatype, ParameterValue, Parameters } from '../core/types.js';

/** The protocol the core speaks; a backend's HelloNotify must name the same (sdserve_backend.PROTOCOL_VERSION). */
export const PROTOCOL_VERSION = 1;

export const MessageType = {
  HelloNotify: 1,
  LoadRequest: 2,
  LoadResponse: 3,
  ExecuteRequest: 4,
  ExecuteResponse: 5,
  HealthRequest: 6,
  HealthResponse: 7,
  FinalizeRequest: 8,
  FinalizeResponse: 9,
  ErrorNotify: 10,
  ProgressNotify: 11,
  CancelRequest: 12,
  ResponseNotify: 13,
} as const;
export type MessageType = (typeof MessageType)[keyof typeof MessageType];

const MESSAGE_TYPE_VALUES: ReadonlySet<number> = new Set(Object.values(MessageType));
const MESSAGE_TYPE_NAMES = new Map<number, string>(
  Object.entries(MessageType).map(([name, value]) => [value, name]),
);

export function isMessageType(value: number): value is MessageType {
  return MESSAGE_TYPE_VALUES.has(value);
}

export function messageTypeName(value: number): string {
  return MESSAGE_TYPE_NAMES.get(value) ?? `type ${value}`;
}

/** Where a tensor's bytes sit in a frame's payload. */
export interface TensorMeta {
  name: string;
  datatype: KServeDatatype;
  shape: number[];
  offset: number;
  length: number;
}

export interface HelloMeta {
  protocol: number;
  pid: number;
  python: string;
  torch: string | null;
}

/** `args` is Triton's `initialize(args)` dict; every value a string (`model_config` is JSON). */
export interface LoadRequestMeta {
  model_file: string;
  args: Record<string, string>;
}

export type ParameterType = 'integer' | 'number' | 'string' | 'boolean';

/** One request parameter a backend reads: its JSON type, range and the loaded model's default. */
export interface ParameterSpec {
  /** A list: any of these types. */
  type: ParameterType | ParameterType[];
  minimum?: number;
  maximum?: number;
  multiple_of?: number;
  enum?: Array<string | number>;
  default?: ParameterValue | null;
  /** Front-end names that mean this parameter (informational). */
  aliases?: string[];
  description?: string;
  /** Values known to be accepted, for a form to offer (informational; e.g. the LoRA files present at load). */
  examples?: string[];
}

/** An input or output as a backend declares it: KServe datatype, dims without the batch dimension. */
export interface DeclaredTensor {
  name: string;
  datatype: string;
  dims: number[];
  optional?: boolean;
}

/**
 * What a backend declares it takes, in LoadResponse (docs/backend-protocol.md, "Capabilities").
 * A backend that declares nothing keeps Triton's behaviour: request-level batching as configured
 * and request parameters passed on unchecked.
 */
export interface CapabilitiesMeta {
  /** e.g. ["text_to_image"]. */
  tasks: string[];
  /** step: each request goes to the backend as it arrives; request: whole batches (Triton's dynamic batching). */
  batching: 'step' | 'request';
  /** Images per request the backend accepts. */
  max_images?: number;
  /** Every request parameter the backend reads. */
  parameters: Record<string, ParameterSpec>;
  /** Names config.pbtxt may set (informational). */
  config_parameters?: string[];
  /**
   * The inputs it reads (dims without the batch dimension). A name declared more than once may
   * come in any of its forms (say `image` as UINT8 pixels or as BYTES files).
   */
  inputs?: DeclaredTensor[];
  /** The UINT8 [B, H, W, 3] output. */
  image_output?: string;
  /** A BYTES [B, 1] output holding each image as a file in `output_format`, produced only when requested by name. */
  encoded_output?: string;
  /** The refiner model (of the same repository) that finishes its text-to-image requests, under `high_noise_fraction`. */
  refiner?: string;
}

export interface LoadResponseMeta {
  cuda: string | null;
  capabilities?: CapabilitiesMeta;
}

export interface RequestMeta {
  request_id: string;
  inputs: TensorMeta[];
  /** Empty: every output the model produces. */
  requested_output_names: string[];
  parameters: Parameters;
}

export interface ExecuteRequestMeta {
  requests: RequestMeta[];
}

/** A Triton error code name, as `pb_utils.TritonError` numbers them. */
export type TritonErrorCode =
  | 'UNKNOWN' | 'INTERNAL' | 'NOT_FOUND' | 'INVALID_ARG' | 'UNAVAILABLE' | 'UNSUPPORTED'
  | 'ALREADY_EXISTS' | 'CANCELLED';

/** `parameters`: the response's own (`InferenceResponse(parameters=...)`), e.g. the seed an image came from. */
export type ResponseMeta = { outputs: TensorMeta[]; parameters?: Parameters } | { error: string; code?: TritonErrorCode };

export type ExecuteResponseMeta = { responses: ResponseMeta[] } | ErrorMeta;

export interface ErrorMeta {
  error: string;
}

/**
 * A failed LoadResponse: `code` INVALID_ARG when the model's config is at fault (the caller's
 * error), else INTERNAL; absent from backends that predate it (INTERNAL).
 */
export interface LoadErrorMeta extends ErrorMeta {
  code?: TritonErrorCode;
}

export interface ProgressMeta {
  request_id: string;
  /** Position of the request in its ExecuteRequest. */
  request_index: number;
  step: number;
  steps: number;
  /** [H, W, 3]: the payload is a uint8 preview image of the request. */
  preview_shape?: number[];
}

/**
 * One response of a decoupled model for one request of an ExecuteRequest (same correlation id);
 * `response` is absent when the model sent only the final flag.
 */
export interface ResponseNotifyMeta {
  /** Position of the request in its ExecuteRequest. */
  request_index: number;
  response?: ResponseMeta;
  /** The request's last response: nothing more comes for it. */
  final: boolean;
}

export interface CancelRequestMeta {
  request_ids: string[];
}

export function isErrorMeta(metadata: object): metadata is ErrorMeta {
  return typeof (metadata as Partial<ErrorMeta>).error === 'string';
}
