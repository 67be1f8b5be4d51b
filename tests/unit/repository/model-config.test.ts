import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  modelConfigFromJson, parseModelConfig, type ModelConfig,
} from '../../../src/repository/index.js';

const FILE = '/repo/sd/config.pbtxt';

/** Shaped like the Stable Diffusion configs of Triton's tutorial, which sdserve must load as-is. */
function diffusionConfig(version: string, size: string): string {
  return `backend: "diffusion"
max_batch_size: 1

dynamic_batching {
  max_queue_delay_microseconds: 100000
}

input [
  {
    name: "prompt"
    data_type: TYPE_STRING
    dims: [1]
  },
  {
    name: "negative_prompt"
    data_type: TYPE_STRING
    dims: [1]
    optional: true
  }
]
output [
  {
    name: "generated_image"
    data_type: TYPE_UINT8
    dims: [ -1, -1, -1]
  }
]

instance_group [
  {
    count: 1
    kind: KIND_GPU
    gpus: [0]
  }
]

parameters[
  {
    key: "onnx_opset"
    value: {
      string_value: "18"
    }
  },
  {
    key: "image_height"
    value: {
      string_value: "${size}"
    }
  },
  {
    key: "image_width"
    value: {
      string_value: "${size}"
    }
  },
  {
    key: "steps"
    value: {
      string_value: "30"
    }
  },
  {
    key: "scheduler"
    value: {
      string_value: ""
    }
  },
  {
    key: "guidance_scale"
    value: {
      string_value: "5.0"
    }
  },
  {
    key: "seed"
    value: {
      string_value: ""
    }
  },
  {
    key: "version"
    value: {
      string_value: "${version}"
    }
  },
  {
    key: "force_engine_build"
    value: {
      string_value: ""
    }
  }
]

# Uncomment to change the scheduler:
# parameters { key: "scheduler" value: { string_value: "DPMSolverMultistepScheduler" } }
`;
}

function expectedDiffusionConfig(name: string, version: string, size: string): ModelConfig {
  const parameter = (value: string) => ({ string_value: value });
  return {
    name,
    platform: '',
    backend: 'diffusion',
    version_policy: { latest: { num_versions: 1 } },
    max_batch_size: 1,
    input: [
      {
        name: 'prompt', data_type: 'TYPE_STRING', format: 'FORMAT_NONE', dims: [1],
        is_shape_tensor: false, allow_ragged_batch: false, optional: false,
      },
      {
        name: 'negative_prompt', data_type: 'TYPE_STRING', format: 'FORMAT_NONE', dims: [1],
        is_shape_tensor: false, allow_ragged_batch: false, optional: true,
      },
    ],
    output: [
      { name: 'generated_image', data_type: 'TYPE_UINT8', dims: [-1, -1, -1], label_filename: '', is_shape_tensor: false },
    ],
    instance_group: [{ name: `${name}_0`, kind: 'KIND_GPU', count: 1, gpus: [0] }],
    dynamic_batching: {
      preferred_batch_size: [],
      max_queue_delay_microseconds: 100000,
      preserve_ordering: false,
      priority_levels: 0,
      default_priority_level: 0,
      priority_queue_policy: {},
    },
    parameters: {
      onnx_opset: parameter('18'),
      image_height: parameter(size),
      image_width: parameter(size),
      steps: parameter('30'),
      scheduler: parameter(''),
      guidance_scale: parameter('5.0'),
      seed: parameter(''),
      version: parameter(version),
      force_engine_build: parameter(''),
    },
    default_model_filename: '',
    model_transaction_policy: { decoupled: false },
  };
}

function assertConfigError(text: string, message: string | RegExp, dirName = 'sd'): void {
  assert.throws(() => parseModelConfig(text, FILE, dirName), { name: 'SdserveError', code: 'SDS_ERR_CONFIG', message });
}

test('loads the tutorial Stable Diffusion 1.5 config', () => {
  const config = parseModelConfig(diffusionConfig('1.5', '512'), FILE, 'stable_diffusion_1_5');
  assert.deepEqual(config, expectedDiffusionConfig('stable_diffusion_1_5', '1.5', '512'));
});

test('loads the tutorial Stable Diffusion XL config', () => {
  const text = `name: "stable_diffusion_xl"\n${diffusionConfig('xl-1.0', '1024')}`;
  const config = parseModelConfig(text, FILE, 'stable_diffusion_xl');
  assert.deepEqual(config, expectedDiffusionConfig('stable_diffusion_xl', 'xl-1.0', '1024'));
});

test('fills Triton defaults for an almost empty config', () => {
  const config = parseModelConfig('backend: "python"', FILE, 'tiny');
  assert.deepEqual(config, {
    name: 'tiny',
    platform: '',
    backend: 'python',
    version_policy: { latest: { num_versions: 1 } },
    max_batch_size: 0,
    input: [],
    output: [],
    instance_group: [{ name: 'tiny_0', kind: 'KIND_GPU', count: 1, gpus: [] }],
    parameters: {},
    default_model_filename: '',
    model_transaction_policy: { decoupled: false },
  });
});

test('defaults an instance group without kind or count to KIND_AUTO x1', () => {
  const config = parseModelConfig('instance_group { name: "g" } instance_group { kind: KIND_CPU count: 2 }', FILE, 'sd');
  assert.deepEqual(config.instance_group, [
    { name: 'g', kind: 'KIND_AUTO', count: 1, gpus: [] },
    { name: 'sd_1', kind: 'KIND_CPU', count: 2, gpus: [] },
  ]);
});

test('reads every modelled input and output field', () => {
  const config = parseModelConfig(`
    input { name: "image" data_type: TYPE_FP16 format: FORMAT_NCHW dims: [3, -1, -1]
            reshape { shape: [1, 3, -1, -1] } allow_ragged_batch: True is_shape_tensor: f }
    output { name: "labels" data_type: 11 dims: 10 label_filename: "labels.txt" reshape: { shape: [] } }`,
  FILE, 'sd');
  assert.deepEqual(config.input, [{
    name: 'image', data_type: 'TYPE_FP16', format: 'FORMAT_NCHW', dims: [3, -1, -1],
    reshape: { shape: [1, 3, -1, -1] }, is_shape_tensor: false, allow_ragged_batch: true, optional: false,
  }]);
  assert.deepEqual(config.output, [{
    name: 'labels', data_type: 'TYPE_FP32', dims: [10], reshape: { shape: [] },
    label_filename: 'labels.txt', is_shape_tensor: false,
  }]);
});

test('reads each version policy', () => {
  const policy = (text: string) => parseModelConfig(text, FILE, 'sd').version_policy;
  assert.deepEqual(policy('version_policy: { latest: { num_versions: 2 } }'), { latest: { num_versions: 2 } });
  assert.deepEqual(policy('version_policy { latest {} }'), { latest: { num_versions: 1 } });
  assert.deepEqual(policy('version_policy: { all: {} }'), { all: {} });
  assert.deepEqual(policy('version_policy: { specific: { versions: [1, 3] } }'), { specific: { versions: [1, 3] } });
});

test('reads dynamic batching priorities and queue policies', () => {
  const config = parseModelConfig(`
    max_batch_size: 8
    dynamic_batching {
      preferred_batch_size: [ 4, 8 ]
      preserve_ordering: true
      priority_levels: 2
      default_priority_level: 2
      default_queue_policy { max_queue_size: 16 }
      priority_queue_policy { key: 1 value: { timeout_action: DELAY default_timeout_microseconds: 5000 allow_timeout_override: true } }
      priority_queue_policy { key: 2 }
    }`, FILE, 'sd');
  const defaults = { timeout_action: 'REJECT', default_timeout_microseconds: 0, allow_timeout_override: false, max_queue_size: 0 };
  assert.deepEqual(config.dynamic_batching, {
    preferred_batch_size: [4, 8],
    max_queue_delay_microseconds: 0,
    preserve_ordering: true,
    priority_levels: 2,
    default_priority_level: 2,
    default_queue_policy: { ...defaults, max_queue_size: 16 },
    priority_queue_policy: {
      1: { timeout_action: 'DELAY', default_timeout_microseconds: 5000, allow_timeout_override: true, max_queue_size: 0 },
      2: defaults,
    },
  });
});

test('accepts ModelConfig fields sdserve does not use and keeps them for the backend', () => {
  const config = parseModelConfig(`
    name: "sd"
    optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt" } ] } }
    model_warmup [ { name: "w" batch_size: 1 inputs { key: "prompt" value: { data_type: TYPE_STRING dims: [1] zero_data: true } } } ]
    response_cache { enable: true }
    ensemble_scheduling { step [ { model_name: "x" model_version: -1 } ] }
    input { name: "p" data_type: TYPE_STRING dims: [1] is_non_linear_format_io: false }
    instance_group { count: 1 rate_limiter { resources [ { name: "r" count: 1 } ] } passive: false }`,
  FILE, 'sd');
  assert.equal(config.input.length, 1);
  assert.equal(config.instance_group[0].count, 1);
  assert.deepEqual(config.optimization, { execution_accelerators: { gpu_execution_accelerator: [{ name: 'tensorrt' }] } });
  assert.deepEqual(config.response_cache, { enable: true });
});

test('keeps a parameter named __proto__ as plain data', () => {
  const config = parseModelConfig('parameters { key: "__proto__" value { string_value: "x" } }', FILE, 'sd');
  assert.deepEqual(Object.keys(config.parameters), ['__proto__']);
  assert.equal(Object.getPrototypeOf(config.parameters), Object.prototype);
});

test('rejects a misspelled field inside an input, at its position', () => {
  assertConfigError('input [\n  { name: "p"\n    data_typ: TYPE_STRING dims: [1] }\n]',
    "/repo/sd/config.pbtxt:3:5: input[0]: unknown field 'data_typ'; did you mean 'data_type'?");
});

test('rejects an unknown top-level field', () => {
  assertConfigError('max_batch_sise: 1', "/repo/sd/config.pbtxt:1:1: unknown field 'max_batch_sise'; did you mean 'max_batch_size'?");
});

test('rejects a name that differs from the model folder', () => {
  assertConfigError('\nname: "other"', '/repo/sd/config.pbtxt:2:1: name: "other" does not match the model directory name "sd"');
});

test('rejects a data type that is not a TYPE_*', () => {
  assertConfigError('input { name: "p" data_type: TYPE_FLOAT dims: 1 }',
    /^\/repo\/sd\/config\.pbtxt:1:30: input\[0\]\.data_type: expected one of TYPE_INVALID, TYPE_BOOL, .*TYPE_BF16, found 'TYPE_FLOAT'$/);
});

test('rejects a data type written as a string', () => {
  assertConfigError('input { name: "p" data_type: "TYPE_FP32" dims: 1 }',
    /:1:30: input\[0\]\.data_type: expected one of .*, found string "TYPE_FP32"$/);
});

test('rejects a missing data type', () => {
  assertConfigError('output { name: "o" dims: 1 }', /:1:8: output\[0\]\.data_type: is required/);
});

test('rejects dims below -1 and zero-sized dims', () => {
  assertConfigError('input { name: "p" data_type: TYPE_FP32 dims: [1, -2] }',
    '/repo/sd/config.pbtxt:1:50: input[0].dims[1]: expected an integer >= -1, found -2');
  assertConfigError('output { name: "o" data_type: TYPE_FP32 dims: [0] }',
    '/repo/sd/config.pbtxt:1:48: output[0].dims[0]: expected -1 (variable size) or a size >= 1, found 0');
});

test('rejects an image format without three dims', () => {
  assertConfigError('input { name: "i" data_type: TYPE_FP32 format: FORMAT_NHWC dims: [3, 3] }',
    /:1:60: input\[0\]\.dims: FORMAT_NHWC needs exactly 3 dims, found 2$/);
});

test('rejects duplicate input names at the second one', () => {
  assertConfigError('input { name: "p" data_type: TYPE_STRING dims: 1 }\ninput { name: "p" data_type: TYPE_STRING dims: 1 }',
    '/repo/sd/config.pbtxt:2:9: input[1].name: input name "p" is already used by input[0]');
});

test('rejects an empty tensor name', () => {
  assertConfigError('output { data_type: TYPE_UINT8 dims: 1 }', /:1:8: output\[0\]: expected a non-empty 'name'$/);
});

test('rejects a negative max_batch_size', () => {
  assertConfigError('max_batch_size: -1', '/repo/sd/config.pbtxt:1:17: max_batch_size: expected an integer between 0 and 2147483647, found -1');
});

test('rejects an unknown instance kind and GPUs for a CPU group', () => {
  assertConfigError('instance_group { kind: KIND_TPU }',
    "/repo/sd/config.pbtxt:1:24: instance_group[0].kind: expected one of KIND_AUTO, KIND_GPU, KIND_CPU, KIND_MODEL, found 'KIND_TPU'");
  assertConfigError('instance_group [ { kind: KIND_CPU gpus: [0] } ]',
    /:1:35: instance_group\[0\]\.gpus: cannot be given for KIND_CPU/);
  assertConfigError('instance_group { count: 0 }', /:1:25: instance_group\[0\]\.count: expected an integer between 1 and/);
});

test('rejects a bool field given a string', () => {
  assertConfigError('input { name: "p" data_type: TYPE_STRING dims: 1 optional: "yes" }',
    /:1:60: input\[0\]\.optional: expected true or false, found string "yes"$/);
});

test('rejects a preferred batch size above max_batch_size', () => {
  assertConfigError('max_batch_size: 2\ndynamic_batching { preferred_batch_size: [1, 4] }',
    '/repo/sd/config.pbtxt:2:46: dynamic_batching.preferred_batch_size[1]: preferred batch size 4 exceeds max_batch_size 2');
});

test('rejects priority settings outside the priority levels', () => {
  assertConfigError('dynamic_batching { priority_levels: 2 default_priority_level: 3 }',
    /:1:63: dynamic_batching\.default_priority_level: expected an integer between 1 and 2, found 3$/);
  assertConfigError('dynamic_batching { priority_levels: 2 }',
    /:1:18: dynamic_batching: default_priority_level is required/);
  assertConfigError('dynamic_batching { priority_levels: 2 default_priority_level: 1 priority_queue_policy { key: 5 value {} } }',
    /:1:94: dynamic_batching\.priority_queue_policy\[0\]\.key: expected an integer between 1 and 2, found 5$/);
  assertConfigError('dynamic_batching { priority_queue_policy { key: 1 value { timeout_action: REJECT } } }',
    '/repo/sd/config.pbtxt:1:49: dynamic_batching.priority_queue_policy[0]: needs priority_levels to be set');
  assertConfigError('dynamic_batching { priority_levels: 1 default_priority_level: 1 priority_queue_policy { key: 1 value { timeout_action: RETRY } } }',
    "/repo/sd/config.pbtxt:1:120: dynamic_batching.priority_queue_policy[0].value.timeout_action: expected one of REJECT, DELAY, found 'RETRY'");
});

test('rejects a non-repeated field set twice or as a list', () => {
  assertConfigError('backend: "a"\nbackend: "b"', '/repo/sd/config.pbtxt:2:1: backend: is set more than once (first set at 1:1)');
  assertConfigError('max_batch_size: [1]', '/repo/sd/config.pbtxt:1:1: max_batch_size: is not a repeated field, so it cannot be a [ ] list');
});

test('rejects two members of one oneof', () => {
  assertConfigError('dynamic_batching {}\nsequence_batching {}',
    '/repo/sd/config.pbtxt:2:1: sequence_batching: only one of dynamic_batching, sequence_batching, ensemble_scheduling may be set, found both dynamic_batching and sequence_batching');
  assertConfigError('version_policy { latest {} all {} }', /:1:28: version_policy\.all: only one of latest, all, specific/);
});

test('rejects an empty specific version list and version 0', () => {
  assertConfigError('version_policy { specific {} }', /:1:27: version_policy\.specific: expected at least one entry in versions$/);
  assertConfigError('version_policy { specific { versions: [0] } }', /:1:40: version_policy\.specific\.versions\[0\]: expected an integer >= 1, found 0$/);
});

test('rejects a parameter given twice or without a key', () => {
  assertConfigError('parameters { key: "a" value { string_value: "1" } }\nparameters { key: "a" }',
    '/repo/sd/config.pbtxt:2:19: parameters[1].key: parameter "a" is set more than once');
  assertConfigError('parameters { value { string_value: "1" } }', "/repo/sd/config.pbtxt:1:12: parameters[0]: map entry needs a 'key'");
  assertConfigError('parameters { key: "a" value { int_value: 1 } }', /:1:31: parameters\[0\]\.value: unknown field 'int_value'/);
});

test('passes syntax errors through with their position', () => {
  assertConfigError('input {\n  name: "p"\n', "/repo/sd/config.pbtxt:3:1: expected '}' to close the '{' at 1:7, found end of input");
});

test('reads a JSON config override the same way as config.pbtxt', () => {
  const json = JSON.parse(`{
    "name": "stable_diffusion_xl",
    "backend": "diffusion",
    "maxBatchSize": 1,
    "dynamic_batching": { "max_queue_delay_microseconds": "100000" },
    "input": [
      { "name": "prompt", "data_type": "TYPE_STRING", "dims": ["1"] },
      { "name": "negative_prompt", "dataType": "TYPE_STRING", "dims": [1], "optional": true }
    ],
    "output": [{ "name": "generated_image", "data_type": "TYPE_UINT8", "dims": [-1, "-1", -1] }],
    "instance_group": [{ "count": 1, "kind": "KIND_GPU", "gpus": [0] }],
    "parameters": {
      "onnx_opset": { "string_value": "18" }, "image_height": { "string_value": "1024" },
      "image_width": { "stringValue": "1024" }, "steps": { "string_value": "30" },
      "scheduler": { "string_value": "" }, "guidance_scale": { "string_value": "5.0" },
      "seed": { "string_value": "" }, "version": { "string_value": "xl-1.0" },
      "force_engine_build": { "string_value": "" }
    },
    "version_policy": null
  }`);
  const fromJson = modelConfigFromJson(json, 'stable_diffusion_xl');
  assert.deepEqual(fromJson, expectedDiffusionConfig('stable_diffusion_xl', 'xl-1.0', '1024'));
});

test('validates a JSON override with the same checks, naming the field', () => {
  const reject = (json: unknown, message: string | RegExp) => assert.throws(
    () => modelConfigFromJson(json, 'sd'), { name: 'SdserveError', code: 'SDS_ERR_CONFIG', message });
  reject({ input: [{ name: 'p', data_type: 'TYPE_NOPE', dims: [1] }] },
    /^config override: input\[0\]\.data_type: expected one of .*, found string "TYPE_NOPE"$/);
  reject({ name: 'other' }, 'config override: name: "other" does not match the model directory name "sd"');
  reject({ input: [{ name: 'p', data_typ: 'TYPE_FP32' }] }, "config override: input[0]: unknown field 'data_typ'; did you mean 'data_type'?");
  reject({ max_batch_size: 1.5 }, 'config override: max_batch_size: expected an integer, found number 1.5');
  reject('backend: "x"', 'config override: expected a JSON object, found a string');
});

test('hands backends the fields sdserve does not act on, as Triton does; decoupled: True is true', () => {
  const config = parseModelConfig(`
backend: "python"
model_transaction_policy { decoupled: True }
optimization { input_pinned_memory { enable: false } priority: PRIORITY_MAX }
model_warmup [ { name: "w" batch_size: 1 } ]
metric_tags { key: "team" value: "images" }
`, FILE, 'repeat');
  assert.deepEqual(config.model_transaction_policy, { decoupled: true });
  assert.deepEqual(config.optimization, { input_pinned_memory: { enable: false }, priority: 'PRIORITY_MAX' });
  assert.deepEqual(config.model_warmup, [{ name: 'w', batch_size: 1 }]);
  assert.deepEqual(config.metric_tags, { team: 'images' });
  assert.deepEqual(parseModelConfig('backend: "python"', FILE, 'plain').model_transaction_policy, { decoupled: false });
});
