/**
 * Typed model configuration. Field names keep Triton's protobuf spelling (model_config.proto),
 * so the JSON form served by `/v2/models/{m}/config` is this object as it is.
 */

export type TritonDataType =
  | 'TYPE_INVALID' | 'TYPE_BOOL' | 'TYPE_UINT8' | 'TYPE_UINT16' | 'TYPE_UINT32' | 'TYPE_UINT64'
  | 'TYPE_INT8' | 'TYPE_INT16' | 'TYPE_INT32' | 'TYPE_INT64' | 'TYPE_FP16' | 'TYPE_FP32'
  | 'TYPE_FP64' | 'TYPE_STRING' | 'TYPE_BF16';

export interface ModelInput {
  name: string;
  data_type: TritonDataType;
  format: string;
  dims: number[];
  reshape?: { shape: number[] };
  is_shape_tensor: boolean;
  allow_ragged_batch: boolean;
  optional: boolean;
}

export interface ModelOutput {
  name: string;
  data_type: TritonDataType;
  dims: number[];
  reshape?: { shape: number[] };
  label_filename: string;
  is_shape_tensor: boolean;
}

export type InstanceKind = 'KIND_AUTO' | 'KIND_GPU' | 'KIND_CPU' | 'KIND_MODEL';

export interface InstanceGroup {
  name: string;
  kind: InstanceKind;
  count: number;
  gpus: number[];
}

export type TimeoutAction = 'REJECT' | 'DELAY';

export interface QueuePolicy {
  timeout_action: TimeoutAction;
  default_timeout_microseconds: number;
  allow_timeout_override: boolean;
  max_queue_size: number;
}

export interface DynamicBatching {
  preferred_batch_size: number[];
  max_queue_delay_microseconds: number;
  preserve_ordering: boolean;
  priority_levels: number;
  default_priority_level: number;
  default_queue_policy?: QueuePolicy;
  priority_queue_policy: Record<string, QueuePolicy>;
}

export type VersionPolicy =
  | { latest: { num_versions: number } }
  | { all: Record<string, never> }
  | { specific: { versions: number[] } };

export interface ModelParameter {
  string_value: string;
}

export interface ModelConfig {
  name: string;
  platform: string;
  backend: string;
  version_policy: VersionPolicy;
  max_batch_size: number;
  input: ModelInput[];
  output: ModelOutput[];
  instance_group: InstanceGroup[];
  dynamic_batching?: DynamicBatching;
  parameters: Record<string, ModelParameter>;
  default_model_filename: string;
  /** The parser always fills it (Triton's default: not decoupled). */
  model_transaction_policy?: { decoupled: boolean };
  /** Fields sdserve does not act on (optimization, model_warmup, ...), kept as protobuf JSON for the backend. */
  [passedThrough: string]: unknown;
}
