import assert from 'node:assert/strict';
import { test } from 'node:test';
import { mean, percentile, summarizeLatencies } from '../../../src/cli/client-stats.js';

test('mean averages the values', () => {
  assert.equal(mean([1, 2, 3, 6]), 3);
  assert.equal(mean([0.5]), 0.5);
});

test('percentile interpolates linearly between the nearest ranks', () => {
  const values = [4, 1, 3, 2]; // unsorted on purpose
  assert.equal(percentile(values, 0), 1);
  assert.equal(percentile(values, 50), 2.5);
  assert.equal(percentile(values, 100), 4);
  const hundred = Array.from({ length: 101 }, (_, i) => i);
  assert.equal(percentile(hundred, 90), 90);
  assert.equal(percentile(hundred, 99), 99);
  assert.ok(Math.abs(percentile([1, 2], 90) - 1.9) < 1e-12);
});

test('percentile leaves its input unsorted', () => {
  const values = [3, 1, 2];
  percentile(values, 50);
  assert.deepEqual(values, [3, 1, 2]);
});

test('percentile rejects a percent outside [0, 100]', () => {
  assert.throws(() => percentile([1], 101), RangeError);
  assert.throws(() => percentile([1], -1), RangeError);
  assert.throws(() => percentile([1], NaN), RangeError);
});

test('empty samples give NaN instead of throwing', () => {
  assert.ok(Number.isNaN(mean([])));
  const stats = summarizeLatencies([]);
  assert.ok([stats.mean, stats.p50, stats.p90, stats.p99].every(Number.isNaN));
});

test('summarizeLatencies reports mean and p50/p90/p99', () => {
  const stats = summarizeLatencies([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  assert.equal(stats.mean, 5.5);
  assert.equal(stats.p50, 5.5);
  assert.ok(Math.abs(stats.p90 - 9.1) < 1e-12);
  assert.ok(Math.abs(stats.p99 - 9.91) < 1e-12);
});
