import assert from 'node:assert/strict';
import { test } from 'node:test';

import { QUOTED_VALUE_MAX, quoted } from '../../src/errors.js';

test('a short string is quoted as it was, in the marks asked for', () => {
  assert.equal(quoted('euler_a'), '"euler_a"');
  assert.equal(quoted('tiny_sd', "'"), "'tiny_sd'");
  assert.equal(quoted('3', ''), '3');
});

test('a value longer than the bound keeps its start and says its length', () => {
  const value = `${'x'.repeat(100_000)}tail`;
  const shown = quoted(value);
  assert.equal(shown, `"${'x'.repeat(QUOTED_VALUE_MAX)}"… (100004 characters)`);
  assert.ok(!shown.includes('tail'));
  assert.equal(quoted('y'.repeat(QUOTED_VALUE_MAX)), `"${'y'.repeat(QUOTED_VALUE_MAX)}"`);
  assert.equal(quoted('z'.repeat(QUOTED_VALUE_MAX + 1), "'"), `'${'z'.repeat(QUOTED_VALUE_MAX)}'… (${QUOTED_VALUE_MAX + 1} characters)`);
});

test('newlines and control characters are escaped, so a value cannot start a log line of its own', () => {
  const forged = 'x\n{"level":50,"msg":"forged"}\r\u001b[2J\u0085\u2028';
  for (const quote of ['"', "'", ''] as const) {
    const shown = quoted(forged, quote);
    assert.doesNotMatch(shown, /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/);
    assert.match(shown, /x\\n\{/);
  }
  assert.equal(quoted(forged), '"x\\n{\\"level\\":50,\\"msg\\":\\"forged\\"}\\r\\u001b[2J\\u0085\\u2028"');
});

test('a quote mark inside the value is escaped for the marks used', () => {
  assert.equal(quoted('say "hi"'), '"say \\"hi\\""');
  assert.equal(quoted('it\'s "x"', "'"), "'it\\'s \"x\"'");
  assert.equal(quoted('back\\slash"', "'"), "'back\\\\slash\"'");
});

test('a cut never splits a character in two', () => {
  const shown = quoted(`${'a'.repeat(QUOTED_VALUE_MAX - 1)}😀😀`);
  assert.equal(shown, `"${'a'.repeat(QUOTED_VALUE_MAX - 1)}"… (${QUOTED_VALUE_MAX + 3} characters)`);
});

test('other values are shown as their JSON text, bounded the same way', () => {
  assert.equal(quoted(7), '7');
  assert.equal(quoted(true), 'true');
  assert.equal(quoted(null), 'null');
  assert.equal(quoted({ a: [1] }), '{"a":[1]}');
  assert.equal(quoted(12n), '12');
  assert.equal(quoted(undefined), 'undefined');
  const big = quoted({ key: 'v'.repeat(5000) });
  assert.ok(big.length < QUOTED_VALUE_MAX + 40);
  assert.match(big, /^\{"key":"v+… \(5010 characters\)$/);
});

test('a value that is not a string cannot carry a line break through either: JSON leaves U+2028 and C1 controls as they are', () => {
  const shown = quoted({ name: 'x\u2028{"level":50}\u0085y', list: ['\u2029'] });
  assert.doesNotMatch(shown, /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/);
  assert.equal(shown, '{"name":"x\\u2028{\\"level\\":50}\\u0085y","list":["\\u2029"]}');
  assert.equal(JSON.stringify(JSON.parse(shown)), JSON.stringify({ name: 'x\u2028{"level":50}\u0085y', list: ['\u2029'] }));
  const long = quoted(['\u2028'.repeat(5000)]);
  assert.doesNotMatch(long, /[\u2028]/);
  assert.match(long, /… \(5004 characters\)$/);
});
