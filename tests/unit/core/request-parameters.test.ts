import assert from 'node:assert/strict';
import { test } from 'node:test';

import type { CapabilitiesMeta } from '../../../src/backend/index.js';
import { parseBoolean } from '../../../src/core/booleans.js';
import { closestName } from '../../../src/core/did-you-mean.js';
import { checkRequestParameters } from '../../../src/core/request-parameters.js';

const CAPABILITIES: CapabilitiesMeta = {
  tasks: ['text_to_image'],
  batching: 'step',
  parameters: {
    steps: { type: 'integer', minimum: 1, maximum: 1000 },
    guidance_scale: { type: 'number', minimum: 0, aliases: ['cfg_scale'] },
    seed: { type: 'integer', minimum: 0, maximum: 18446744073709551615 },
    scheduler: { type: 'string', enum: ['', 'euler', 'ddim'], aliases: ['sampler', 'sampler_name'] },
    width: { type: 'integer', minimum: 8, maximum: 4096, multiple_of: 8 },
    preview: { type: ['boolean', 'integer'], minimum: 0 },
  },
};

const check = (parameters: Record<string, string | number | boolean>) => checkRequestParameters(parameters, CAPABILITIES, 'tiny_sd');

test('a model that declares nothing gets its parameters as sent', () => {
  assert.deepEqual(checkRequestParameters({ anything: 'goes' }, undefined, 'add_sub'), { anything: 'goes' });
});

test('an unknown parameter names itself, what was meant and every accepted name', () => {
  assert.throws(() => check({ guidance: 2 }), (err: Error) => {
    assert.match(err.message, /model 'tiny_sd' has no request parameter 'guidance' \(did you mean 'guidance_scale'\?\)/);
    assert.match(err.message, /accepted parameters: guidance_scale, preview, priority, scheduler, seed, steps, timeout, width$/);
    return true;
  });
  assert.throws(() => check({ stepz: 3 }), /did you mean 'steps'\?/);
  assert.throws(() => check({ sampler: 'euler' }), /did you mean 'scheduler'\?/);
  assert.throws(() => check({ cfg_scale: 7 }), /did you mean 'guidance_scale'\?/);
  assert.throws(() => check({ zzzzzz: 1 }), (err: Error) => !err.message.includes('did you mean'));
});

test('values are held to their declared type and range', () => {
  assert.deepEqual(check({ steps: 20, guidance_scale: 7.5, scheduler: 'euler', width: 512 }),
    { steps: 20, guidance_scale: 7.5, scheduler: 'euler', width: 512 });
  assert.throws(() => check({ steps: 2.5 }), /'steps' must be an integer, got 2.5/);
  assert.throws(() => check({ steps: 'many' }), /'steps' must be an integer, got "many"/);
  assert.throws(() => check({ steps: 0 }), /'steps' must be between 1 and 1000, got 0/);
  assert.throws(() => check({ guidance_scale: -1 }), /'guidance_scale' must be at least 0, got -1/);
  assert.throws(() => check({ width: 500 }), /'width' must be a multiple of 8, got 500/);
  assert.throws(() => check({ scheduler: 'eulr' }), /'scheduler' must be one of "", "euler", "ddim", got "eulr" \(did you mean 'euler'\?\)/);
  assert.throws(() => check({ steps: true }), /'steps' must be an integer, got true/);
});

test('64-bit seeds are compared exactly, as strings or numbers', () => {
  assert.deepEqual(check({ seed: '18446744073709551615' }), { seed: '18446744073709551615' });
  assert.throws(() => check({ seed: '18446744073709551616' }), /'seed' must be between 0 and 18446744073709551615/);
  assert.throws(() => check({ seed: -1 }), /'seed' must be between 0/);
});

test('booleans parse one way: JSON booleans or "true"/"false" in any case', () => {
  assert.deepEqual(check({ preview: 'TRUE' }), { preview: true });
  assert.deepEqual(check({ preview: 'false' }), { preview: false });
  assert.deepEqual(check({ preview: 4 }), { preview: 4 });
  assert.throws(() => check({ preview: 'yes' }), /'preview' must be a boolean \(true or false\) or an integer, got "yes"/);
  assert.equal(parseBoolean('False'), false);
  assert.equal(parseBoolean(' true '), true);
  assert.equal(parseBoolean('1'), undefined);
  assert.equal(parseBoolean(0), undefined);
});

test('closestName suggests typos and names a word stands for, nothing far off', () => {
  assert.equal(closestName('stesp', ['steps', 'seed']), 'steps');
  assert.equal(closestName('height', ['height', 'weight']), 'height');
  assert.equal(closestName('negative', ['negative_prompt', 'prompt']), 'negative_prompt');
  assert.equal(closestName('banana', ['steps', 'seed']), undefined);
});
