/**
 * The closed set of backend IPC messages (docs/backend-protocol.md, "Messages"), mirroring
 * python/sdserve_backend/messages.py, and the JSON metadata each one carries.
 */

import type { KServeDatatype, Parameters } from '../core/types.js';

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

export type LoadResponseMeta = { cuda: string | null } | ErrorMeta;

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

export type ResponseMeta = { outputs: TensorMeta[] } | { error: string; code?: TritonErrorCode };

export type ExecuteResponseMeta = { responses: ResponseMeta[] } | ErrorMeta;

export interface ErrorMeta {
  error: string;
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
