import assert from 'node:assert/strict';
import { test } from 'node:test';

import { initializeConfig } from '../../../src/core/initialize-config.js';
import { parseModelConfig } from '../../../src/repository/model-config.js';

const DECOUPLED = `
backend: "python"
model_transaction_policy { decoupled: True }
input [{ name: "IN" data_type: TYPE_INT32 dims: [ -1 ] }]
output [{ name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] }]
instance_group [{ kind: KIND_CPU count: 2 }]
model_warmup [{ name: "w" batch_size: 1 }]
`;

test('initialize gets every field of the config, with Triton\'s defaults where the file leaves one out', () => {
  const config = initializeConfig(parseModelConfig(DECOUPLED, 'config.pbtxt', 'repeat'));

  // `True` reads like `true`.
  assert.deepEqual(config.model_transaction_policy, { decoupled: true });
  assert.equal(config.default_model_filename, 'model.py');
  assert.equal(config.runtime, '');
  assert.deepEqual(config.optimization, {
    priority: 'PRIORITY_DEFAULT', input_pinned_memory: { enable: true }, output_pinned_memory: { enable: true },
    gather_kernel_buffer_threshold: 0, eager_batching: false,
  });
  for (const field of ['batch_input', 'batch_output']) assert.deepEqual(config[field], [], field);
  for (const field of ['cc_model_filenames', 'metric_tags']) assert.deepEqual(config[field], {}, field);
  assert.deepEqual(config.instance_group, [{
    name: 'repeat_0', kind: 'KIND_CPU', count: 2, gpus: [], secondary_devices: [], profile: [], passive: false, host_policy: '',
  }]);
  // What the file sets is kept as it says.
  assert.deepEqual(config.model_warmup, [{ name: 'w', batch_size: 1 }]);
  assert.deepEqual(config.input.map((input) => [input.name, input.data_type, input.dims]), [['IN', 'TYPE_INT32', [-1]]]);
});

test('a config without a transaction policy is not decoupled, and a set file name stays', () => {
  const config = initializeConfig(parseModelConfig('backend: "python"\ndefault_model_filename: "m.py"', 'config.pbtxt', 'plain'));

  assert.deepEqual(config.model_transaction_policy, { decoupled: false });
  assert.equal(config.default_model_filename, 'm.py');
});
