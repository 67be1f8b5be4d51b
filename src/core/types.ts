/**
 * The request/response model shared by every front end, the scheduler and the backends.
 * Tensor data is always raw bytes: little-endian, row-major; BYTES tensors hold each element
 * as a 4-byte little-endian length followed by its bytes (Triton's binary form), so no front
 * end or backend ever converts pixels to JSON numbers.
 */

import type { SdserveError } from '../errors.js';

export const KSERVE_DATATYPES = [
  'BOOL', 'UINT8', 'UINT16', 'UINT32', 'UINT64', 'INT8', 'INT16', 'INT32', 'INT64',
  'FP16', 'FP32', 'FP64', 'BF16', 'BYTES',
] as const;
export type KServeDatatype = (typeof KSERVE_DATATYPES)[number];

/** Bytes per element; BYTES has no fixed size. */
export const DATATYPE_SIZE: Record<KServeDatatype, number> = {
  BOOL: 1, UINT8: 1, UINT16: 2, UINT32: 4, UINT64: 8, INT8: 1, INT16: 2, INT32: 4, INT64: 8,
  FP16: 2, FP32: 4, FP64: 8, BF16: 2, BYTES: 0,
};

export type ParameterValue = string | number | boolean;
export type Parameters = Record<string, ParameterValue>;

export interface Tensor {
  name: string;
  datatype: KServeDatatype;
  shape: number[];
  data: Buffer;
  parameters?: Parameters;
}

export interface RequestedOutput {
  name: string;
  parameters?: Parameters;
}

export interface InferRequest {
  id?: string;
  model_name: string;
  /** Empty or absent: the model's latest ready version. */
  model_version?: string;
  inputs: Tensor[];
  /** Absent: every output of the model. */
  outputs?: RequestedOutput[];
  parameters: Parameters;
}

export interface InferResponse {
  id?: string;
  model_name: string;
  model_version: string;
  outputs: Tensor[];
  parameters?: Parameters;
}

export interface TensorMetadata {
  name: string;
  datatype: KServeDatatype;
  shape: number[];
}

export interface ServerMetadata {
  name: string;
  version: string;
  extensions: string[];
}

export interface ModelMetadata {
  name: string;
  versions: string[];
  platform: string;
  inputs: TensorMetadata[];
  outputs: TensorMetadata[];
}

/** Triton model states, as the repository index reports them. */
export type ModelState = 'UNKNOWN' | 'READY' | 'UNAVAILABLE' | 'LOADING' | 'UNLOADING';

export interface ModelStatus {
  name: string;
  version: string;
  state: ModelState;
  reason: string;
}

/** A small uint8 [H, W, 3] picture of a request's image so far. */
export interface ImagePreview {
  shape: number[];
  data: Buffer;
}

/** How far a running request is: denoising step `step` of `steps`, and the time left at this pace. */
export interface InferProgress {
  step: number;
  steps: number;
  elapsed_ms: number;
  eta_ms: number;
  /** Present on the steps the request asked previews for (request parameter `preview`). */
  preview?: ImagePreview;
}

export type ProgressCallback = (progress: InferProgress) => void;

/** A queued request's place in its model's queue (1: next to run), told whenever it changes. */
export type QueuePositionCallback = (position: number) => void;

/**
 * One answer of a decoupled model (config `model_transaction_policy { decoupled: true }`) to one
 * request: a response, an error, or neither when the model sent its final flag alone. A model
 * may send any number of answers; `final` is set on the last.
 */
export interface StreamedAnswer {
  response?: InferResponse;
  error?: SdserveError;
  final: boolean;
}

export type AnswerCallback = (answer: StreamedAnswer) => void;
