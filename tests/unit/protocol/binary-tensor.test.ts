import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { SdserveError } from '../../../src/errors.js';
import {
  BinarySectionReader, elementCount, joinBytesElements, parseHeaderLength, splitBytesElements,
  splitInferBody, tensorBytesProblem,
} from '../../../src/protocol/binary-tensor.js';

function rejects400(fn: () => unknown, message: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof SdserveError);
    assert.equal(err.httpStatus, 400);
    assert.match(err.message, message);
    return true;
  });
}

describe('binary tensor data', () => {
  it('counts elements, a scalar holding one and a zero dim none', () => {
    assert.equal(elementCount([2, 3, 4]), 24);
    assert.equal(elementCount([]), 1);
    assert.equal(elementCount([5, 0]), 0);
  });

  it('joins and splits BYTES elements, empty and non-ASCII included', () => {
    const elements = [Buffer.alloc(0), Buffer.from('ünïcødé ✓'), Buffer.from([0, 255])];
    const raw = joinBytesElements(elements);
    assert.equal(raw.readUInt32LE(0), 0);
    assert.deepEqual(splitBytesElements(raw), elements);
  });

  it('reports a BYTES length that runs past the end', () => {
    const raw = Buffer.from([5, 0, 0, 0, 0x61]);
    assert.equal(splitBytesElements(raw), undefined);
    assert.equal(splitBytesElements(Buffer.from([1, 0])), undefined);
    assert.match(tensorBytesProblem("input 'p'", 'BYTES', [1], raw) ?? '', /input 'p' has malformed BYTES data/);
  });

  it('checks byte sizes against the shape', () => {
    assert.equal(tensorBytesProblem("input 'x'", 'FP16', [2, 2], Buffer.alloc(8)), undefined);
    assert.equal(tensorBytesProblem("input 'x'", 'FP16', [2, 2], Buffer.alloc(6)),
      "input 'x' has 6 bytes of FP16 data but shape [2,2] needs 8");
    assert.equal(tensorBytesProblem("input 'p'", 'BYTES', [2], joinBytesElements([Buffer.from('a')])),
      "input 'p' has 1 elements but shape [2] needs 2");
  });

  it('parses Inference-Header-Content-Length', () => {
    assert.equal(parseHeaderLength(undefined, 10), undefined);
    assert.equal(parseHeaderLength('7', 10), 7);
    assert.equal(parseHeaderLength('10', 10), 10);
  });

  for (const bad of ['abc', '-1', '1.5', '', '0x10']) {
    it(`rejects Inference-Header-Content-Length '${bad}'`, () => {
      rejects400(() => parseHeaderLength(bad, 100), /Inference-Header-Content-Length must be one non-negative integer/);
    });
  }

  it('rejects a header length of 0, past the body, or repeated', () => {
    rejects400(() => parseHeaderLength('0', 100), /is 0/);
    rejects400(() => parseHeaderLength('101', 100), /101 exceeds the request body of 100 bytes/);
    rejects400(() => parseHeaderLength(['1', '2'], 100), /one non-negative integer/);
  });

  it('splits a body at the header length', () => {
    const body = Buffer.from('{"a":1}BIN');
    assert.deepEqual(splitInferBody(body, 7), { header: Buffer.from('{"a":1}'), binary: Buffer.from('BIN') });
    const all = splitInferBody(body, undefined);
    assert.equal(all.header, body);
    assert.equal(all.binary.length, 0);
  });

  it('hands out binary sections in order', () => {
    const reader = new BinarySectionReader(Buffer.from([1, 2, 3, 4, 5]));
    assert.deepEqual([...reader.take('a', 2)], [1, 2]);
    assert.deepEqual([...reader.take('b', 0)], []);
    assert.deepEqual([...reader.take('c', 3)], [3, 4, 5]);
    reader.finish();
  });

  it('rejects bad or oversized binary_data_size and unclaimed bytes', () => {
    const reader = new BinarySectionReader(Buffer.alloc(4));
    rejects400(() => reader.take('a', 5), /input 'a': binary_data_size 5 exceeds the 4 bytes/);
    rejects400(() => reader.take('a', -1), /non-negative integer, got -1/);
    rejects400(() => reader.take('a', 1.5), /got 1.5/);
    rejects400(() => reader.take('a', '4'), /got "4"/);
    reader.take('a', 1);
    rejects400(() => reader.finish(), /3 bytes of binary data that no input's binary_data_size claims/);
  });
});
