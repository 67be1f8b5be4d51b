import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  contentsToRaw, decodeInferRequest, decodeParameters, encodeInferResponse, encodeParameters,
  type WireInferInputTensor, type WireModelInferRequest, type WireTensorContents,
} from '../../../src/protocol/grpc/index.js';
import { SdserveError } from '../../../src/errors.js';

/** Typed contents as proto-loader decodes them (`defaults: true`: every list present). */
function contents(fields: Partial<WireTensorContents>): WireTensorContents {
  return {
    bool_contents: [], int_contents: [], int64_contents: [], uint_contents: [], uint64_contents: [],
    fp32_contents: [], fp64_contents: [], bytes_contents: [], ...fields,
  };
}

function input(fields: Partial<WireInferInputTensor>): WireInferInputTensor {
  return { name: 'x', datatype: 'FP32', shape: [1], parameters: {}, contents: null, ...fields };
}

function request(fields: Partial<WireModelInferRequest>): WireModelInferRequest {
  return { model_name: 'm', model_version: '', id: '', parameters: {}, inputs: [], outputs: [], raw_input_contents: [], ...fields };
}

const invalid = (pattern: RegExp) => (err: unknown) => (
  err instanceof SdserveError && err.code === 'SDS_ERR_INVALID_ARG' && pattern.test(err.message)
);

describe('gRPC typed contents to raw bytes', () => {
  const cases: Array<[string, Partial<WireTensorContents>, Buffer]> = [
    ['BOOL', { bool_contents: [true, false] }, Buffer.from([1, 0])],
    ['INT8', { int_contents: [-1, 127] }, Buffer.from([0xff, 0x7f])],
    ['INT16', { int_contents: [-2] }, Buffer.from([0xfe, 0xff])],
    ['INT32', { int_contents: [258] }, Buffer.from([2, 1, 0, 0])],
    ['INT64', { int64_contents: [-2] }, Buffer.from([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])],
    ['UINT8', { uint_contents: [255] }, Buffer.from([255])],
    ['UINT16', { uint_contents: [513] }, Buffer.from([1, 2])],
    ['UINT32', { uint_contents: [0xffffffff] }, Buffer.from([255, 255, 255, 255])],
    ['UINT64', { uint64_contents: [2 ** 64] }, Buffer.alloc(8, 0xff)],
    ['FP32', { fp32_contents: [1.5] }, Buffer.from([0, 0, 0xc0, 0x3f])],
    ['FP64', { fp64_contents: [-2] }, Buffer.from([0, 0, 0, 0, 0, 0, 0, 0xc0])],
    ['BYTES', { bytes_contents: [Buffer.from('hi'), Buffer.alloc(0)] }, Buffer.from([2, 0, 0, 0, 0x68, 0x69, 0, 0, 0, 0])],
  ];
  for (const [datatype, fields, expected] of cases) {
    it(`writes ${datatype} little-endian from ${Object.keys(fields)[0]}`, () => {
      const count = Object.values(fields)[0]!.length;
      const raw = contentsToRaw('x', datatype as 'FP32', [count], contents(fields));
      assert.deepEqual(raw, expected);
    });
  }

  it('rejects a value out of its datatype range, naming the element', () => {
    assert.throws(() => contentsToRaw('x', 'INT8', [2], contents({ int_contents: [1, 128] })),
      invalid(/input 'x' element 1: 128 is out of range for INT8/));
    assert.throws(() => contentsToRaw('x', 'UINT16', [1], contents({ uint_contents: [70000] })), invalid(/out of range/));
  });

  it('rejects an element count that does not fit the shape', () => {
    assert.throws(() => contentsToRaw('x', 'FP32', [2, 2], contents({ fp32_contents: [1, 2, 3] })),
      invalid(/input 'x' has 3 elements in contents.fp32_contents but shape \[2,2\] needs 4/));
  });

  it('rejects contents in the field of another datatype', () => {
    assert.throws(() => contentsToRaw('x', 'FP32', [1], contents({ fp32_contents: [1], int_contents: [1] })),
      invalid(/carried by contents.fp32_contents, but contents.int_contents is set/));
  });

  it('rejects typed contents for FP16, which has none', () => {
    assert.throws(() => contentsToRaw('x', 'FP16', [1], contents({ fp32_contents: [1] })),
      invalid(/datatype FP16 has no typed contents; send it in raw_input_contents/));
  });
});

describe('gRPC ModelInferRequest decoding', () => {
  it('takes raw_input_contents in input order and drops empty id and version', () => {
    const decoded = decodeInferRequest(request({
      inputs: [input({ name: 'a', datatype: 'INT32', shape: [1] }), input({ name: 'b', datatype: 'BYTES', shape: [1] })],
      raw_input_contents: [Buffer.from([7, 0, 0, 0]), Buffer.from([1, 0, 0, 0, 0x7a])],
    }));
    assert.deepEqual(decoded, {
      model_name: 'm', parameters: {},
      inputs: [
        { name: 'a', datatype: 'INT32', shape: [1], data: Buffer.from([7, 0, 0, 0]) },
        { name: 'b', datatype: 'BYTES', shape: [1], data: Buffer.from([1, 0, 0, 0, 0x7a]) },
      ],
    });
  });

  it('keeps id, version, requested outputs and every parameter kind as plain values', () => {
    const decoded = decodeInferRequest(request({
      id: 'r1', model_version: '2',
      parameters: {
        seed: { parameter_choice: 'int64_param', int64_param: 42, bool_param: false },
        guidance: { parameter_choice: 'double_param', double_param: 7.5 },
        big: { parameter_choice: 'uint64_param', uint64_param: 9 },
        prompt: { parameter_choice: 'string_param', string_param: 'cat' },
        flag: { parameter_choice: 'bool_param', bool_param: false },
      },
      inputs: [input({ contents: contents({ fp32_contents: [1] }) })],
      outputs: [{ name: 'y', parameters: { binary_data: { parameter_choice: 'bool_param', bool_param: true } } }, { name: 'z', parameters: {} }],
    }));
    assert.equal(decoded.id, 'r1');
    assert.equal(decoded.model_version, '2');
    assert.deepEqual(decoded.parameters, { seed: 42, guidance: 7.5, big: 9, prompt: 'cat', flag: false });
    assert.deepEqual(decoded.outputs, [{ name: 'y', parameters: { binary_data: true } }, { name: 'z' }]);
  });

  it('rejects a raw_input_contents count that differs from the inputs', () => {
    assert.throws(() => decodeInferRequest(request({ inputs: [input({}), input({ name: 'y' })], raw_input_contents: [Buffer.alloc(4)] })),
      invalid(/expected 2 raw_input_contents \(one per input\), got 1/));
  });

  it('rejects typed contents next to raw_input_contents', () => {
    assert.throws(() => decodeInferRequest(request({
      inputs: [input({ contents: contents({ fp32_contents: [1] }) })], raw_input_contents: [Buffer.alloc(4)],
    })), invalid(/input 'x': contents must not be set when raw_input_contents is used/));
  });

  it('rejects an input without data, an unknown datatype, a negative dim and a short raw tensor', () => {
    assert.throws(() => decodeInferRequest(request({ inputs: [input({})] })), invalid(/input 'x' has no data/));
    assert.throws(() => decodeInferRequest(request({ inputs: [input({ datatype: 'FLOAT' })], raw_input_contents: [Buffer.alloc(4)] })),
      invalid(/unknown datatype 'FLOAT'/));
    assert.throws(() => decodeInferRequest(request({ inputs: [input({ shape: [-1] })], raw_input_contents: [Buffer.alloc(4)] })),
      invalid(/shape \[-1\] must hold non-negative integers/));
    assert.throws(() => decodeInferRequest(request({ inputs: [input({ shape: [2] })], raw_input_contents: [Buffer.alloc(4)] })),
      invalid(/input 'x' has 4 bytes of FP32 data but shape \[2\] needs 8/));
  });

  it('refuses shared memory inputs as unsupported', () => {
    assert.throws(() => decodeInferRequest(request({
      inputs: [input({ parameters: { shared_memory_region: { parameter_choice: 'string_param', string_param: 'r' } } })],
      raw_input_contents: [Buffer.alloc(4)],
    })), (err: unknown) => err instanceof SdserveError && err.code === 'SDS_ERR_UNSUPPORTED');
  });

  it('rejects a parameter with no value set', () => {
    assert.throws(() => decodeParameters({ p: {} }, 'request'), invalid(/request: parameter 'p' has no value/));
  });
});

describe('gRPC ModelInferResponse encoding', () => {
  it('puts every output in raw_output_contents and types parameters by value', () => {
    const data = Buffer.from([1, 2, 3, 4]);
    const wire = encodeInferResponse({
      id: 'r', model_name: 'm', model_version: '1', parameters: { n: 3, x: 0.5, ok: true, s: 'v' },
      outputs: [{ name: 'y', datatype: 'UINT8', shape: [4], data, parameters: { k: 1 } }],
    });
    assert.deepEqual(wire, {
      id: 'r', model_name: 'm', model_version: '1',
      parameters: { n: { int64_param: 3 }, x: { double_param: 0.5 }, ok: { bool_param: true }, s: { string_param: 'v' } },
      outputs: [{ name: 'y', datatype: 'UINT8', shape: [4], parameters: { k: { int64_param: 1 } } }],
      raw_output_contents: [data],
    });
  });

  it('answers an empty id when the response has none', () => {
    assert.equal(encodeInferResponse({ model_name: 'm', model_version: '1', outputs: [] }).id, '');
    assert.deepEqual(encodeParameters(undefined), {});
  });
});
