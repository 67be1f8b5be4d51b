import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { KServeDatatype } from '../../../src/core/types.js';
import { SdserveError } from '../../../src/errors.js';
import { decodeJsonTensorData, encodeJsonTensorData } from '../../../src/protocol/json-tensor.js';

function rejects400(fn: () => unknown, message: RegExp | string): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof SdserveError, `expected SdserveError, got ${String(err)}`);
    assert.equal(err.httpStatus, 400);
    if (typeof message === 'string') assert.equal(err.message, message);
    else assert.match(err.message, message);
    return true;
  });
}

const CASES: Array<[KServeDatatype, unknown[]]> = [
  ['BOOL', [true, false, true, true]],
  ['UINT8', [0, 1, 128, 255]],
  ['UINT16', [0, 1, 0x1234, 0xffff]],
  ['UINT32', [0, 1, 0x12345678, 0xffffffff]],
  ['UINT64', [0, 1, 2 ** 40, Number.MAX_SAFE_INTEGER]],
  ['INT8', [-128, -1, 0, 127]],
  ['INT16', [-32768, -1, 0, 32767]],
  ['INT32', [-2147483648, -1, 0, 2147483647]],
  ['INT64', [Number.MIN_SAFE_INTEGER, -1, 0, Number.MAX_SAFE_INTEGER]],
  ['FP32', [-1.5, 0, 0.25, 2 ** 100]],
  ['FP64', [-1.5, 0, Math.PI, 1e300]],
  ['BYTES', ['', 'prompt', 'héllo wörld', '日本語 🎨']],
];

describe('JSON tensor data', () => {
  for (const [datatype, values] of CASES) {
    it(`round-trips ${datatype} through raw bytes`, () => {
      const raw = decodeJsonTensorData('x', datatype, [2, 2], values);
      assert.deepEqual(encodeJsonTensorData('x', datatype, [2, 2], raw), values);
    });
  }

  it('writes little-endian bytes', () => {
    assert.deepEqual(
      decodeJsonTensorData('x', 'INT32', [2], [1, -2]),
      Buffer.from([1, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff]),
    );
    assert.deepEqual(decodeJsonTensorData('x', 'UINT16', [1], [0x0102]), Buffer.from([2, 1]));
    assert.deepEqual(decodeJsonTensorData('x', 'BOOL', [2], [true, false]), Buffer.from([1, 0]));
  });

  it('serializes BYTES as 4-byte length then bytes, empty and non-ASCII included', () => {
    const raw = decodeJsonTensorData('prompt', 'BYTES', [3], ['', 'é', 'ab']);
    assert.deepEqual(raw, Buffer.from([0, 0, 0, 0, 2, 0, 0, 0, 0xc3, 0xa9, 2, 0, 0, 0, 0x61, 0x62]));
  });

  it('accepts {"b64": ...} BYTES elements and emits invalid UTF-8 as b64', () => {
    const bytes = Buffer.from([0xff, 0x00, 0xfe]);
    const raw = decodeJsonTensorData('img', 'BYTES', [2], [{ b64: bytes.toString('base64') }, 'ok']);
    assert.deepEqual(encodeJsonTensorData('img', 'BYTES', [2], raw), [{ b64: '/wD+' }, 'ok']);
  });

  it('rejects a malformed b64 element', () => {
    rejects400(() => decodeJsonTensorData('img', 'BYTES', [1], [{ b64: 'no spaces!' }]),
      /input 'img' element 0: expected a string or \{"b64"/);
    rejects400(() => decodeJsonTensorData('img', 'BYTES', [1], [42]), /got 42/);
  });

  it('accepts nested data that matches the shape', () => {
    const raw = decodeJsonTensorData('x', 'INT8', [2, 3], [[1, 2, 3], [4, 5, 6]]);
    assert.deepEqual([...raw], [1, 2, 3, 4, 5, 6]);
  });

  it('accepts a scalar shape [] with one element', () => {
    assert.deepEqual(decodeJsonTensorData('seed', 'INT64', [], [7]), Buffer.from([7, 0, 0, 0, 0, 0, 0, 0]));
  });

  it('names the input and the counts when the element count is wrong', () => {
    rejects400(() => decodeJsonTensorData('x', 'FP32', [2, 2], [1, 2, 3]),
      "input 'x' has 3 elements but shape [2,2] needs 4");
  });

  it('rejects nested data shaped unlike the declared shape', () => {
    rejects400(() => decodeJsonTensorData('prompt', 'BYTES', [3, 2], [['a', 'b', 'c'], ['d', 'e', 'f']]),
      "unexpected shape for input 'prompt': data is nested as [2,3] but shape is [3,2]");
  });

  it('rejects ragged nested data', () => {
    rejects400(() => decodeJsonTensorData('x', 'INT32', [2, 2], [[1, 2], [3]]), /ragged/);
    rejects400(() => decodeJsonTensorData('x', 'INT32', [2, 2], [[1, 2], 3, 4]), /unexpected shape for input 'x'/);
  });

  it('rejects data that is not an array', () => {
    rejects400(() => decodeJsonTensorData('x', 'INT32', [1], 5), `input 'x': "data" must be an array, got 5`);
  });

  it('rejects out-of-range and mistyped elements, naming the element', () => {
    rejects400(() => decodeJsonTensorData('x', 'UINT8', [2], [1, 256]),
      "input 'x' element 1: expected an integer in [0, 255] for UINT8, got 256");
    rejects400(() => decodeJsonTensorData('x', 'INT8', [1], [-129]), /element 0: expected an integer in \[-128, 127\]/);
    rejects400(() => decodeJsonTensorData('x', 'INT32', [1], [1.5]), /got 1.5/);
    rejects400(() => decodeJsonTensorData('x', 'UINT64', [1], [-1]), /UINT64/);
    rejects400(() => decodeJsonTensorData('x', 'INT64', [1], [2 ** 63]), /INT64/);
    rejects400(() => decodeJsonTensorData('x', 'FP32', [1], ['1.0']), /expected a finite number for FP32, got "1.0"/);
    rejects400(() => decodeJsonTensorData('x', 'BOOL', [1], [1]), /expected true or false for BOOL, got 1/);
  });

  for (const datatype of ['FP16', 'BF16'] as const) {
    it(`rejects ${datatype} in JSON form`, () => {
      rejects400(() => decodeJsonTensorData('latents', datatype, [1], [1.0]),
        new RegExp(`input 'latents': datatype ${datatype} has no JSON form`));
    });
  }

  it('refuses to encode output bytes that do not fit the shape (internal error)', () => {
    assert.throws(() => encodeJsonTensorData('y', 'FP32', [2], Buffer.alloc(4)), (err: unknown) => {
      assert.ok(err instanceof SdserveError);
      assert.equal(err.httpStatus, 500);
      assert.match(err.message, /output 'y' has 4 bytes of FP32 data but shape \[2\] needs 8/);
      return true;
    });
  });
});
