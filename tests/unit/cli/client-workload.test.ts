import assert from 'node:assert/strict';
import { test } from 'node:test';
import { poissonSendTimes, seededRandom, stepsPicker } from '../../../src/cli/client-workload.js';

test('seededRandom repeats its sequence for a seed and differs between seeds', () => {
  const draw = (seed: number) => { const random = seededRandom(seed); return Array.from({ length: 5 }, random); };
  assert.deepEqual(draw(7), draw(7));
  assert.notDeepEqual(draw(7), draw(8));
  assert.ok(draw(7).every((value) => value >= 0 && value < 1));
});

test('stepsPicker keeps a fixed count and draws every value of a range, inclusive', () => {
  assert.equal(stepsPicker(30, seededRandom(1))(), 30);
  assert.equal(stepsPicker(undefined, seededRandom(1))(), undefined);
  const pick = stepsPicker({ min: 20, max: 23 }, seededRandom(1));
  const drawn = new Set(Array.from({ length: 200 }, pick));
  assert.deepEqual([...drawn].sort(), [20, 21, 22, 23]);
});

test('poissonSendTimes start at zero, increase, and average 1/rate apart', () => {
  const times = poissonSendTimes(4000, 8, seededRandom(3));
  assert.equal(times[0], 0);
  assert.ok(times.every((time, index) => index === 0 || time >= times[index - 1]));
  const meanGap = times[times.length - 1] / (times.length - 1);
  assert.ok(Math.abs(meanGap - 1 / 8) < 0.01, `mean gap ${meanGap}`);
});
