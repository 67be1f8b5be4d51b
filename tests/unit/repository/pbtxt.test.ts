import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parsePbtxt, type PbtxtMessage, type PbtxtValue } from '../../../src/repository/index.js';

type Plain = string | number | bigint | { identifier: string } | Array<[string, Plain]>;

/** The tree without positions: messages as [name, value] pairs, identifiers tagged. */
function plain(value: PbtxtValue): Plain {
  switch (value.kind) {
    case 'message': return value.fields.map((field): [string, Plain] => [field.name, plain(field.value)]);
    case 'identifier': return { identifier: value.value };
    default: return value.value;
  }
}

const parse = (text: string) => plain(parsePbtxt(text, 'test.pbtxt'));

function assertSyntaxError(text: string, message: string): void {
  assert.throws(() => parsePbtxt(text, 'test.pbtxt'), {
    name: 'SdserveError',
    code: 'SDS_ERR_CONFIG',
    message,
  });
}

test('reads scalar fields and skips # comments', () => {
  const text = '# leading comment\nname: "sd" # trailing comment\nmax_batch_size: 4\n# last line';
  assert.deepEqual(parse(text), [['name', 'sd'], ['max_batch_size', 4n]]);
});

test('reads nested messages written with {}, : {} and <>', () => {
  const text = 'a { b: 1 } c: { d { e: 2 } } f < g: 3 >';
  assert.deepEqual(parse(text), [
    ['a', [['b', 1n]]],
    ['c', [['d', [['e', 2n]]]]],
    ['f', [['g', 3n]]],
  ]);
});

test('expands lists into repeated entries, in order and mixed with plain repeats', () => {
  const text = 'dims: [1, -1] dims: 3 input [ { name: "a" }, { name: "b" } ] input: [ < name: "c" > ] gpus: []';
  assert.deepEqual(parse(text), [
    ['dims', 1n], ['dims', -1n], ['dims', 3n],
    ['input', [['name', 'a']]], ['input', [['name', 'b']]], ['input', [['name', 'c']]],
  ]);
});

test('marks list entries so singular fields can reject them', () => {
  const tree: PbtxtMessage = parsePbtxt('a: [1] b: 2', 'test.pbtxt');
  assert.deepEqual(tree.fields.map((f) => [f.name, f.inList]), [['a', true], ['b', false]]);
});

test('records the line and column of each field and value', () => {
  const tree = parsePbtxt('\n  name: "x"\n  dims: [ 7 ]', 'test.pbtxt');
  assert.deepEqual(tree.fields[0].position, { line: 2, column: 3 });
  assert.deepEqual(tree.fields[1].value.position, { line: 3, column: 11 });
});

test('decodes string escapes in single and double quotes', () => {
  const text = String.raw`a: "tab\tnl\nq\"s\'b\\" b: 'it\'s "x"' c: "\101\x42\103" d: "\303\251\u00e9"`;
  assert.deepEqual(parse(text), [
    ['a', 'tab\tnl\nq"s\'b\\'], ['b', 'it\'s "x"'], ['c', 'ABC'], ['d', 'éé'],
  ]);
});

test('concatenates adjacent strings, also across lines and quote styles', () => {
  assert.deepEqual(parse('a: "foo" \'bar\'\n   "baz" b: ""'), [['a', 'foobarbaz'], ['b', '']]);
});

test('reads decimal, negative, hex, octal and 64-bit integers', () => {
  const text = 'a: 42 b: -7 c: 0x1F d: -0x10 e: 017 f: 0 g: 18446744073709551615';
  assert.deepEqual(parse(text), [
    ['a', 42n], ['b', -7n], ['c', 31n], ['d', -16n], ['e', 15n], ['f', 0n], ['g', 18446744073709551615n],
  ]);
});

test('reads floats, including exponents, f suffix, inf and nan', () => {
  const tree = parsePbtxt('a: 1.5 b: -2.5e3 c: .5 d: 1e-2 e: 2.5f f: -inf g: -nan h: 3.', 'test.pbtxt');
  const values = tree.fields.map((f) => (f.value.kind === 'float' ? f.value.value : undefined));
  assert.deepEqual(values, [1.5, -2500, 0.5, 0.01, 2.5, -Infinity, NaN, 3]);
});

test('keeps bools and enum names as identifiers for the schema to interpret', () => {
  assert.deepEqual(parse('a: true b: False c: t d: KIND_GPU e: inf'), [
    ['a', { identifier: 'true' }], ['b', { identifier: 'False' }], ['c', { identifier: 't' }],
    ['d', { identifier: 'KIND_GPU' }], ['e', { identifier: 'inf' }],
  ]);
});

test('accepts , and ; between fields', () => {
  assert.deepEqual(parse('a: 1, b: 2; c { d: 3; }, e: 4'), [
    ['a', 1n], ['b', 2n], ['c', [['d', 3n]]], ['e', 4n],
  ]);
});

test('parses an empty document and an empty message', () => {
  assert.deepEqual(parse('  # nothing\n'), []);
  assert.deepEqual(parse('a {}'), [['a', []]]);
});

test('reports a missing value with line and column', () => {
  assertSyntaxError('a {\n  b: }', "test.pbtxt:2:6: expected a value for field 'b', found '}'");
});

test('reports a message left open at end of input', () => {
  assertSyntaxError('a {\n  b: 1\n', "test.pbtxt:3:1: expected '}' to close the '{' at 1:3, found end of input");
});

test('reports the wrong closing bracket', () => {
  assertSyntaxError('a < b: 1 }', "test.pbtxt:1:10: expected '>' to close the '<' at 1:3, found '}'");
});

test('reports a scalar without a colon', () => {
  assertSyntaxError('name "x"', "test.pbtxt:1:6: expected ':' or '{' after field name 'name', found string \"x\"");
});

test('reports a value where a field name belongs', () => {
  assertSyntaxError('a: 1\n42: 3', 'test.pbtxt:2:1: expected a field name, found number 42');
});

test('reports a string left open at end of line', () => {
  assertSyntaxError('a: "abc\nb: 1', 'test.pbtxt:1:8: expected closing " of string, found end of line');
});

test('reports an unknown escape', () => {
  assertSyntaxError(String.raw`a: "x\q"`, String.raw`test.pbtxt:1:6: unknown escape '\q' in string`);
});

test('reports a missing comma between list elements', () => {
  assertSyntaxError('dims: [1 2]', "test.pbtxt:1:10: expected ',' or ']' between list elements of field 'dims', found number 2");
});

test('reports scalars in a list written without a colon', () => {
  assertSyntaxError('dims [1, 2]', "test.pbtxt:1:7: expected '{' (a list without ':' holds only messages) in field 'dims', found number 1");
});

test('reports a number running into a name', () => {
  assertSyntaxError('a: 12abc', "test.pbtxt:1:6: expected a separator after number '12', found \"a\"");
});

test('reports a leading-zero number with non-octal digits', () => {
  assertSyntaxError('a: 09', "test.pbtxt:1:4: expected octal digits after a leading 0 in number '09'");
});

test('reports a minus sign before a non-number', () => {
  assertSyntaxError('a: -KIND_GPU', "test.pbtxt:1:5: expected a number after '-' in field 'a', found identifier 'KIND_GPU'");
});

test('reports a character the format does not use', () => {
  assertSyntaxError('a: 1\n  @', 'test.pbtxt:2:3: unexpected character "@"');
});

test('reports extension field names as unsupported', () => {
  assertSyntaxError('[ext.field]: 1', 'test.pbtxt:1:1: extension and Any field names ([...]) are not supported in model configuration');
});
