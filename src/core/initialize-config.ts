/**
 * The model config a backend's `initialize(args)` gets in `args["model_config"]`: the whole
 * config, with the defaults Triton fills in where the config.pbtxt left a field out, so a Triton
 * Python model reads the same dictionary here as under Triton (e.g. `optimization`,
 * `instance_group[].passive`, `model_transaction_policy.decoupled`).
 */
import type { ModelConfig } from '../repository/model-config-types.js';

const TOP_LEVEL_DEFAULTS: Record<string, () => unknown> = {
  runtime: () => '',
  batch_input: () => [],
  batch_output: () => [],
  optimization: () => ({
    priority: 'PRIORITY_DEFAULT',
    input_pinned_memory: { enable: true },
    output_pinned_memory: { enable: true },
    gather_kernel_buffer_threshold: 0,
    eager_batching: false,
  }),
  cc_model_filenames: () => ({}),
  metric_tags: () => ({}),
  model_warmup: () => [],
  model_transaction_policy: () => ({ decoupled: false }),
};

const INSTANCE_GROUP_DEFAULTS: Record<string, () => unknown> = {
  secondary_devices: () => [],
  profile: () => [],
  passive: () => false,
  host_policy: () => '',
};

function withDefaults<T extends object>(value: T, defaults: Record<string, () => unknown>): T {
  const filled: Record<string, unknown> = { ...(value as Record<string, unknown>) };
  for (const [name, make] of Object.entries(defaults)) {
    if (filled[name] === undefined) filled[name] = make();
  }
  return filled as unknown as T;
}

/** `config` with Triton's defaults where it has no value; a Python model's file name defaults to model.py. */
export function initializeConfig(config: ModelConfig): ModelConfig {
  const filled = withDefaults(config, TOP_LEVEL_DEFAULTS);
  filled.instance_group = config.instance_group.map((group) => withDefaults(group, INSTANCE_GROUP_DEFAULTS));
  if (filled.default_model_filename === '' && config.backend === 'python') filled.default_model_filename = 'model.py';
  return filled;
}
