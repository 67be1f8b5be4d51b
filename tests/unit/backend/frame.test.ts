import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  encodeFrame, FrameDecoder, MalformedFrameError, MessageType, type Frame,
} from '../../../src/backend/index.js';

function collect(maxFrameLength?: number) {
  const frames: Frame[] = [];
  const errors: MalformedFrameError[] = [];
  const decoder = new FrameDecoder({ onFrame: (f) => frames.push(f), onError: (e) => errors.push(e) }, maxFrameLength);
  return { decoder, frames, errors };
}

function rawFrame(type: number, correlationId: number, json: string, payload = Buffer.alloc(0), jsonLength?: number): Buffer {
  const body = Buffer.from(json, 'utf8');
  const head = Buffer.alloc(20);
  head.writeUInt32LE(16 + body.length + payload.length, 0);
  head.writeUInt16LE(type, 4);
  head.writeBigUInt64LE(BigInt(correlationId), 8);
  head.writeUInt32LE(jsonLength ?? body.length, 16);
  return Buffer.concat([head, body, payload]);
}

const healthFrame = () => Buffer.concat(encodeFrame(MessageType.HealthRequest, 77, {}));

test('a frame round-trips type, correlation id, metadata and payload', () => {
  const { decoder, frames, errors } = collect();
  const payload = [Buffer.from([1, 2, 3]), Buffer.from('tensor bytes')];
  for (const part of encodeFrame(MessageType.ExecuteRequest, 2 ** 40 + 5, { requests: [{ a: 'é' }] }, payload)) {
    decoder.push(part);
  }
  assert.deepEqual(errors, []);
  assert.equal(frames.length, 1);
  assert.equal(frames[0].type, MessageType.ExecuteRequest);
  assert.equal(frames[0].correlationId, 2 ** 40 + 5);
  assert.deepEqual(frames[0].metadata, { requests: [{ a: 'é' }] });
  assert.deepEqual(frames[0].payload, Buffer.concat(payload));
});

test('the header follows the spec byte for byte', () => {
  const [head, payload] = encodeFrame(MessageType.LoadRequest, 9, { x: 1 }, [Buffer.from('pp')]);
  assert.equal(head.readUInt32LE(0), 16 + '{"x":1}'.length + 2);
  assert.equal(head.readUInt16LE(4), 2);
  assert.equal(head.readUInt16LE(6), 0);
  assert.equal(head.readBigUInt64LE(8), 9n);
  assert.equal(head.readUInt32LE(16), 7);
  assert.equal(head.toString('utf8', 20), '{"x":1}');
  assert.equal(payload.toString(), 'pp');
});

test('frames split at every possible byte boundary are reassembled', () => {
  const bytes = Buffer.concat([
    ...encodeFrame(MessageType.ProgressNotify, 1, { step: 1 }, [Buffer.alloc(100, 7)]),
    ...encodeFrame(MessageType.ProgressNotify, 2, { step: 2 }),
  ]);
  for (let cut = 1; cut < bytes.length; cut++) {
    const { decoder, frames, errors } = collect();
    decoder.push(bytes.subarray(0, cut));
    decoder.push(bytes.subarray(cut));
    assert.deepEqual(errors, []);
    assert.deepEqual(frames.map((f) => [f.correlationId, f.metadata.step, f.payload.length]), [[1, 1, 100], [2, 2, 0]]);
    assert.equal(decoder.pendingBytes, 0);
  }
});

test('a stream fed one byte at a time yields every frame', () => {
  const { decoder, frames } = collect();
  const bytes = Buffer.concat([healthFrame(), healthFrame(), healthFrame()]);
  for (const byte of bytes) decoder.push(Buffer.from([byte]));
  assert.equal(frames.length, 3);
});

const malformed: Array<[string, Buffer, RegExp, number]> = [
  ['length below the minimum', Buffer.concat([Buffer.from([3, 0, 0, 0]), Buffer.from('xyz')]), /below the 16-byte minimum/, 0],
  ['unknown message type', rawFrame(99, 5, '{}'), /unknown message type 99/, 5],
  ['json_length beyond the frame', rawFrame(7, 5, '{}', Buffer.alloc(0), 50), /json_length 50 exceeds the 2 bytes/, 5],
  ['metadata that is not JSON', rawFrame(7, 5, '{oops'), /not valid JSON/, 5],
  ['metadata that is not an object', rawFrame(7, 5, '[1]'), /must be a JSON object/, 5],
  ['correlation id beyond 2^53', rawFrame(7, 0, '{}').fill(0xff, 8, 16), /correlation id \d+ is too large/, 0],
];

for (const [what, bytes, message, correlationId] of malformed) {
  test(`a frame with ${what} is rejected and the next frame still decodes`, () => {
    const { decoder, frames, errors } = collect();
    assert.doesNotThrow(() => decoder.push(Buffer.concat([bytes, healthFrame()])));
    assert.equal(errors.length, 1);
    assert.ok(errors[0] instanceof MalformedFrameError);
    assert.equal(errors[0].code, 'SDS_ERR_BACKEND');
    assert.match(errors[0].message, message);
    assert.equal(errors[0].correlationId, correlationId);
    assert.deepEqual(frames.map((f) => f.correlationId), [77]);
  });
}

test('a frame over the size limit is skipped without being buffered, across chunks', () => {
  const { decoder, frames, errors } = collect(64);
  const big = Buffer.concat(encodeFrame(MessageType.ExecuteResponse, 3, {}, [Buffer.alloc(1000)]));
  decoder.push(big.subarray(0, 10));
  assert.equal(errors.length, 1);
  assert.match(errors[0].message, /exceeds the 64-byte limit/);
  decoder.push(big.subarray(10, 500));
  assert.equal(decoder.pendingBytes, 0);
  decoder.push(Buffer.concat([big.subarray(500), healthFrame()]));
  assert.deepEqual(frames.map((f) => f.correlationId), [77]);
  assert.equal(errors.length, 1);
});
