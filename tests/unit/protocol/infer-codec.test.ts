import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { SdserveError } from '../../../src/errors.js';
import { joinBytesElements } from '../../../src/protocol/binary-tensor.js';
import {
  decodeInferRequest, encodeInferResponse, type WireInferRequest,
} from '../../../src/protocol/http/infer-codec.js';

function rejects(fn: () => unknown, status: number, message: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof SdserveError);
    assert.equal(err.httpStatus, status);
    assert.match(err.message, message);
    return true;
  });
}

const NONE = Buffer.alloc(0);

describe('inference request/response codec', () => {
  it('decodes JSON and binary inputs, consuming only protocol parameters', () => {
    const wire: WireInferRequest = {
      id: 'r1',
      parameters: { steps: 20, seed: 42, binary_data_output: true },
      inputs: [
        { name: 'prompt', shape: [1], datatype: 'BYTES', data: ['a cat'] },
        { name: 'latents', shape: [2], datatype: 'FP16', parameters: { binary_data_size: 4, tag: 'x' } },
      ],
      outputs: [{ name: 'image', parameters: { binary_data: false, format: 'png' } }],
    };
    const { request, format } = decodeInferRequest(wire, Buffer.from([0, 0x3c, 0, 0x40]), 'sd', '2');
    assert.equal(request.id, 'r1');
    assert.equal(request.model_name, 'sd');
    assert.equal(request.model_version, '2');
    assert.deepEqual(request.parameters, { steps: 20, seed: 42 });
    assert.deepEqual(request.inputs[0].data, joinBytesElements([Buffer.from('a cat')]));
    assert.deepEqual(request.inputs[1].data, Buffer.from([0, 0x3c, 0, 0x40]));
    assert.deepEqual(request.inputs[1].parameters, { tag: 'x' });
    assert.equal(request.inputs[0].parameters, undefined);
    assert.deepEqual(request.outputs, [{ name: 'image', parameters: { format: 'png' } }]);
    assert.equal(format.binaryByDefault, true);
    assert.equal(format.binaryByName.get('image'), false);
  });

  it('leaves version and outputs unset when the request has none', () => {
    const { request } = decodeInferRequest({ inputs: [] }, NONE, 'sd', undefined);
    assert.equal(request.model_version, undefined);
    assert.equal(request.outputs, undefined);
    assert.deepEqual(request.parameters, {});
  });

  it('rejects a binary input whose size does not fit its shape', () => {
    const wire: WireInferRequest = {
      inputs: [{ name: 'x', shape: [2, 2], datatype: 'FP32', parameters: { binary_data_size: 12 } }],
    };
    rejects(() => decodeInferRequest(wire, Buffer.alloc(12), 'm'), 400,
      /input 'x' has 12 bytes of FP32 data but shape \[2,2\] needs 16/);
  });

  it('rejects duplicate inputs, data plus binary, and neither', () => {
    const dup: WireInferRequest = {
      inputs: [{ name: 'a', shape: [1], datatype: 'INT8', data: [1] }, { name: 'a', shape: [1], datatype: 'INT8', data: [1] }],
    };
    rejects(() => decodeInferRequest(dup, NONE, 'm'), 400, /input 'a' appears more than once/);
    const both: WireInferRequest = {
      inputs: [{ name: 'a', shape: [1], datatype: 'INT8', data: [1], parameters: { binary_data_size: 1 } }],
    };
    rejects(() => decodeInferRequest(both, Buffer.alloc(1), 'm'), 400, /both "data" and binary_data_size/);
    rejects(() => decodeInferRequest({ inputs: [{ name: 'a', shape: [1], datatype: 'INT8' }] }, NONE, 'm'), 400,
      /input 'a' has neither "data" nor binary_data_size/);
  });

  it('rejects non-boolean binary flags and unsupported extensions', () => {
    rejects(() => decodeInferRequest({ inputs: [], parameters: { binary_data_output: 'yes' } }, NONE, 'm'), 400,
      /request: parameter 'binary_data_output' must be a boolean/);
    rejects(() => decodeInferRequest({ inputs: [], outputs: [{ name: 'y', parameters: { binary_data: 1 } }] }, NONE, 'm'),
      400, /requested output 'y': parameter 'binary_data' must be a boolean/);
    rejects(() => decodeInferRequest({
      inputs: [{ name: 'a', shape: [1], datatype: 'INT8', parameters: { shared_memory_region: 'r' } }],
    }, NONE, 'm'), 400, /shared memory inputs are not supported/);
    rejects(() => decodeInferRequest({ inputs: [], outputs: [{ name: 'y', parameters: { classification: 3 } }] }, NONE, 'm'),
      400, /classification extension is not supported/);
  });

  it('encodes JSON outputs, echoing the request id', () => {
    const encoded = encodeInferResponse({
      model_name: 'm', model_version: '1',
      outputs: [{ name: 'y', datatype: 'INT16', shape: [2], data: Buffer.from([1, 0, 0xff, 0xff]) }],
    }, { binaryByDefault: false, binaryByName: new Map() }, 'req-7');
    assert.equal(encoded.headerLength, undefined);
    assert.deepEqual(JSON.parse(encoded.body.toString()), {
      id: 'req-7', model_name: 'm', model_version: '1',
      outputs: [{ name: 'y', datatype: 'INT16', shape: [2], data: [1, -1] }],
    });
  });

  it('encodes binary outputs after the JSON in output order; FP16 is always binary', () => {
    const encoded = encodeInferResponse({
      model_name: 'm', model_version: '1',
      outputs: [
        { name: 'a', datatype: 'UINT8', shape: [3], data: Buffer.from([1, 2, 3]) },
        { name: 'b', datatype: 'INT8', shape: [1], data: Buffer.from([9]) },
        { name: 'h', datatype: 'FP16', shape: [1], data: Buffer.from([0, 0x3c]) },
      ],
    }, { binaryByDefault: false, binaryByName: new Map([['a', true]]) });
    const headerLength = encoded.headerLength as number;
    const header = JSON.parse(encoded.body.subarray(0, headerLength).toString());
    assert.deepEqual(header.outputs[0], { name: 'a', datatype: 'UINT8', shape: [3], parameters: { binary_data_size: 3 } });
    assert.deepEqual(header.outputs[1].data, [9]);
    assert.deepEqual(header.outputs[2].parameters, { binary_data_size: 2 });
    assert.deepEqual([...encoded.body.subarray(headerLength)], [1, 2, 3, 0, 0x3c]);
  });

  it('treats output bytes that do not fit the shape as an internal error', () => {
    rejects(() => encodeInferResponse({
      model_name: 'm', model_version: '1', outputs: [{ name: 'a', datatype: 'FP32', shape: [1], data: Buffer.alloc(3) }],
    }, { binaryByDefault: true, binaryByName: new Map() }), 500, /output 'a' has 3 bytes/);
  });
});
