import assert from 'node:assert/strict';
import { test } from 'node:test';
import { checkRequestLimits, requestLimits } from '../../../src/core/request-limits.js';
import type { InferRequest } from '../../../src/core/types.js';
import { joinBytesElements } from '../../../src/protocol/binary-tensor.js';
import type { ModelConfig } from '../../../src/repository/model-config-types.js';

function config(backend: string, parameters: Record<string, string> = {}): ModelConfig {
  return {
    name: 'm', platform: '', backend, version_policy: { latest: { num_versions: 1 } }, max_batch_size: 4,
    input: [], output: [], instance_group: [], default_model_filename: '',
    parameters: Object.fromEntries(Object.entries(parameters).map(([k, v]) => [k, { string_value: v }])),
  };
}

function request(prompts: string[], parameters: Record<string, number | string> = {}): InferRequest {
  return {
    model_name: 'm', parameters,
    inputs: [{ name: 'prompt', datatype: 'BYTES', shape: [prompts.length, 1], data: joinBytesElements(prompts.map((p) => Buffer.from(p))) }],
  };
}

test('SDXL at 1024x1024, four images at 100 steps, passes the diffusion defaults', () => {
  assert.doesNotThrow(() => checkRequestLimits(request(['a', 'b', 'c', 'd'], { height: 1024, width: 1024, steps: 100 }), config('diffusion')));
  assert.doesNotThrow(() => checkRequestLimits(request(['a'], { height: 1024, width: 2048, steps: 50 }), config('diffusion')));
});

test('the size and steps come from the request, else the config, else the largest default', () => {
  const steps = config('diffusion', { steps: '1000', image_height: '512', image_width: '512' });
  assert.doesNotThrow(() => checkRequestLimits(request(['a']), steps));
  assert.throws(() => checkRequestLimits(request(['a', 'b']), steps), /2 image\(s\) x 262144 pixels x 1000 steps/);
  assert.throws(() => checkRequestLimits(request(['a'], { steps: 1000 }), config('diffusion')), /1 image\(s\) x 1048576 pixels x 1000 steps/);
});

test('a config raises, lowers or lifts (0) a limit', () => {
  assert.throws(() => checkRequestLimits(request(['abcdef']), config('diffusion', { max_prompt_chars: '5' })), /6 characters, over the limit of 5/);
  assert.doesNotThrow(() => checkRequestLimits(request(['x'.repeat(10_000)], { height: 4096, width: 4096, steps: 1000 }),
    config('diffusion', { max_prompt_chars: '0', max_image_pixels: '0', max_request_cost: '0' })));
  assert.throws(() => requestLimits(config('diffusion', { max_image_pixels: '-1' })), /'max_image_pixels' must be a non-negative integer/);
});

test('characters are counted, not bytes, and other backends are limited only by their config', () => {
  assert.doesNotThrow(() => checkRequestLimits(request(['é'.repeat(4000)]), config('diffusion')));
  assert.throws(() => checkRequestLimits(request(['é'.repeat(4001)]), config('diffusion')), /4001 characters/);
  assert.doesNotThrow(() => checkRequestLimits(request(['x'.repeat(100_000)], { height: 8192, width: 8192 }), config('python')));
  assert.throws(() => checkRequestLimits(request(['x'.repeat(11)]), config('python', { max_prompt_chars: '10' })), /11 characters/);
});
