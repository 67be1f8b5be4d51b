import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { CapabilitiesMeta } from '../../../src/backend/messages.js';
import { executionDeadline } from '../../../src/core/execution-deadline.js';
import { makesImages } from '../../../src/core/image-model.js';
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

/** What an image model declares at load (the diffusion backend's shape, trimmed). */
const IMAGES: CapabilitiesMeta = { tasks: ['text_to_image'], batching: 'step', parameters: {}, image_output: 'generated_image' };
/** A model that declares parameters but makes no images. */
const TEXT: CapabilitiesMeta = { tasks: ['embedding'], batching: 'request', parameters: {} };

function request(prompts: string[], parameters: Record<string, number | string> = {}): InferRequest {
  return {
    model_name: 'm', parameters,
    inputs: [{ name: 'prompt', datatype: 'BYTES', shape: [prompts.length, 1], data: joinBytesElements(prompts.map((p) => Buffer.from(p))) }],
  };
}

test('SDXL at 1024x1024, four images at 100 steps, passes the diffusion defaults', () => {
  assert.doesNotThrow(() => checkRequestLimits(request(['a', 'b', 'c', 'd'], { height: 1024, width: 1024, steps: 100 }), config('diffusion'), IMAGES));
  assert.doesNotThrow(() => checkRequestLimits(request(['a'], { height: 1024, width: 2048, steps: 50 }), config('diffusion'), IMAGES));
});

test('the size and steps come from the request, else the config, else the largest default', () => {
  const steps = config('diffusion', { steps: '1000', image_height: '512', image_width: '512' });
  assert.doesNotThrow(() => checkRequestLimits(request(['a']), steps, IMAGES));
  assert.throws(() => checkRequestLimits(request(['a', 'b']), steps, IMAGES), /2 image\(s\) x 262144 pixels x 1000 steps/);
  assert.throws(() => checkRequestLimits(request(['a'], { steps: 1000 }), config('diffusion'), IMAGES), /1 image\(s\) x 1048576 pixels x 1000 steps/);
});

test('a config raises, lowers or lifts (0) a limit', () => {
  assert.throws(() => checkRequestLimits(request(['abcdef']), config('diffusion', { max_prompt_chars: '5' }), IMAGES), /6 characters, over the limit of 5/);
  assert.doesNotThrow(() => checkRequestLimits(request(['x'.repeat(10_000)], { height: 4096, width: 4096, steps: 1000 }),
    config('diffusion', { max_prompt_chars: '0', max_image_pixels: '0', max_request_cost: '0' }), IMAGES));
  assert.throws(() => requestLimits(config('diffusion', { max_image_pixels: '-1' })), /'max_image_pixels' must be a non-negative integer/);
});

test('characters are counted, not bytes, and other models are limited only by their config', () => {
  assert.doesNotThrow(() => checkRequestLimits(request(['é'.repeat(4000)]), config('diffusion'), IMAGES));
  assert.throws(() => checkRequestLimits(request(['é'.repeat(4001)]), config('diffusion'), IMAGES), /4001 characters/);
  assert.doesNotThrow(() => checkRequestLimits(request(['x'.repeat(100_000)], { height: 8192, width: 8192 }), config('python')));
  assert.throws(() => checkRequestLimits(request(['x'.repeat(11)]), config('python', { max_prompt_chars: '10' })), /11 characters/);
});

test('the image defaults follow what a backend declares, not the name of its backend', () => {
  const huge = request(['x'.repeat(10_000)], { height: 4096, width: 4096, steps: 999 });
  // A backend of another name that declares an image task or output gets the image limits...
  assert.throws(() => checkRequestLimits(huge, config('my_images'), IMAGES), /over the limit of 4000 \(config parameter max_prompt_chars\)/);
  assert.throws(() => checkRequestLimits(huge, config('python'), { ...IMAGES, tasks: [] }), /max_prompt_chars/);
  // ...and one that declares nothing, or no images, only its config's, whatever its backend is called.
  assert.doesNotThrow(() => checkRequestLimits(huge, config('diffusion')));
  assert.doesNotThrow(() => checkRequestLimits(huge, config('diffusion'), TEXT));
  assert.equal(makesImages(undefined), false);
  assert.equal(makesImages(TEXT), false);
  assert.equal(makesImages({ ...TEXT, tasks: ['inpaint'] }), true);
});

test('one config answers with the limits of what was declared, each time', () => {
  const shared = config('python', { max_image_pixels: '100' });
  assert.equal(requestLimits(shared, IMAGES).maxPromptChars, 4000);
  assert.equal(requestLimits(shared).maxPromptChars, 0);
  assert.equal(requestLimits(shared, IMAGES).maxImagePixels, 100);
  assert.equal(requestLimits(shared).maxImagePixels, 100);
});

test('an image model has a 600 s execution deadline by default; a model that declares none has none; a config sets either', () => {
  assert.deepEqual(executionDeadline(config('whatever'), IMAGES), { deadlineMs: 600_000, graceMs: 10_000 });
  assert.deepEqual(executionDeadline(config('diffusion')), { deadlineMs: 0, graceMs: 10_000 });
  assert.deepEqual(executionDeadline(config('python'), TEXT), { deadlineMs: 0, graceMs: 10_000 });
  assert.deepEqual(executionDeadline(config('python', { max_execution_secs: '5', execution_grace_secs: '1' })), { deadlineMs: 5000, graceMs: 1000 });
  assert.deepEqual(executionDeadline(config('x', { max_execution_secs: '0' }), IMAGES), { deadlineMs: 0, graceMs: 10_000 });
});
