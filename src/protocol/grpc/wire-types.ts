/**
 * The decoded shapes of proto/grpc_service.proto messages as @grpc/proto-loader hands them over
 * with `keepCase, longs: Number, enums: String, defaults: true, oneofs: true`: snake_case fields,
 * 64-bit integers as numbers, bytes as Buffers, unset repeated fields as [], unset message
 * fields as null, and each oneof's chosen member named by a virtual field.
 */

/** InferParameter; `parameter_choice` names the member that is set. */
export interface WireInferParameter {
  parameter_choice?: 'bool_param' | 'int64_param' | 'string_param' | 'double_param' | 'uint64_param';
  bool_param?: boolean;
  int64_param?: number;
  string_param?: string;
  double_param?: number;
  uint64_param?: number;
}

export type WireParameters = Record<string, WireInferParameter>;

export interface WireTensorContents {
  bool_contents: boolean[];
  int_contents: number[];
  int64_contents: number[];
  uint_contents: number[];
  uint64_contents: number[];
  fp32_contents: number[];
  fp64_contents: number[];
  bytes_contents: Buffer[];
}

export interface WireInferInputTensor {
  name: string;
  datatype: string;
  shape: number[];
  parameters: WireParameters;
  contents: WireTensorContents | null;
}

export interface WireRequestedOutput {
  name: string;
  parameters: WireParameters;
}

export interface WireModelInferRequest {
  model_name: string;
  model_version: string;
  id: string;
  parameters: WireParameters;
  inputs: WireInferInputTensor[];
  outputs: WireRequestedOutput[];
  raw_input_contents: Buffer[];
}

/** What the servicer sends back for ModelInferResponse (encoded by protobufjs `fromObject`). */
export interface WireModelInferResponse {
  model_name: string;
  model_version: string;
  id: string;
  parameters: WireParameters;
  outputs: Array<{ name: string; datatype: string; shape: number[]; parameters: WireParameters }>;
  raw_output_contents: Buffer[];
}

export interface WireModelStreamInferResponse {
  error_message: string;
  infer_response: WireModelInferResponse | Pick<WireModelInferResponse, 'id'> | null;
}

export interface WireNameVersion {
  name: string;
  version: string;
}

export interface WireRepositoryIndexRequest {
  repository_name: string;
  ready: boolean;
}

/** ModelRepositoryParameter. */
export interface WireRepositoryParameter {
  parameter_choice?: 'bool_param' | 'int64_param' | 'string_param' | 'bytes_param';
  bool_param?: boolean;
  int64_param?: number;
  string_param?: string;
  bytes_param?: Buffer;
}

export interface WireRepositoryModelRequest {
  repository_name: string;
  model_name: string;
  parameters: Record<string, WireRepositoryParameter>;
}
