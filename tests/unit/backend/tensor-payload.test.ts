import assert from 'node:assert/strict';
import { test } from 'node:test';

import { PAYLOAD_ALIGNMENT, PayloadBuilder, tensorFromPayload } from '../../../src/backend/index.js';

test('tensors are packed at aligned offsets without copying their data', () => {
  const builder = new PayloadBuilder();
  const first = Buffer.alloc(12, 1);
  const second = Buffer.alloc(4, 2);
  const a = builder.add({ name: 'A', datatype: 'FP32', shape: [3], data: first });
  const b = builder.add({ name: 'B', datatype: 'INT32', shape: [1], data: second });

  assert.deepEqual(a, { name: 'A', datatype: 'FP32', shape: [3], offset: 0, length: 12 });
  assert.deepEqual(b, { name: 'B', datatype: 'INT32', shape: [1], offset: PAYLOAD_ALIGNMENT, length: 4 });
  assert.equal(builder.parts[0], first);
  assert.equal(builder.parts[2], second);
  assert.equal(Buffer.concat(builder.parts).length, 2 * PAYLOAD_ALIGNMENT);
});

test('an output is read back as a view of the payload', () => {
  const payload = Buffer.alloc(80);
  payload.writeFloatLE(1.5, 64);
  const tensor = tensorFromPayload(payload, { name: 'O', datatype: 'FP32', shape: [1, 1], offset: 64, length: 4 });
  assert.equal(tensor.data.readFloatLE(0), 1.5);
  assert.equal(tensor.data.buffer, payload.buffer);
});

test('outputs that do not fit the payload or their shape are errors', () => {
  const payload = Buffer.alloc(16);
  assert.throws(() => tensorFromPayload(payload, { name: 'O', datatype: 'FP32', shape: [4], offset: 8, length: 16 }),
    { code: 'SDS_ERR_BACKEND', message: /bytes \[8, 24\) lie outside the 16-byte payload/ });
  assert.throws(() => tensorFromPayload(payload, { name: 'O', datatype: 'FP32', shape: [3], offset: 0, length: 16 }),
    { message: /shape \[3\] of FP32 needs 12 bytes, got 16/ });
  assert.throws(() => tensorFromPayload(payload, { name: 'O', datatype: 'FP8' as 'FP32', shape: [1], offset: 0, length: 1 }),
    { message: /datatype 'FP8' is not a KServe datatype/ });
  assert.doesNotThrow(() => tensorFromPayload(payload, { name: 'S', datatype: 'BYTES', shape: [1], offset: 0, length: 16 }));
});
