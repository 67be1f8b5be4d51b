import { quoted } from '../errors.js';
import type { ModelInput, ModelOutput, TritonDataType } from './model-config-types.js';
import { configError, type MessageReader, type MessageSchema } from './message-reader.js';

/** model_config.proto `DataType`, in enum-number order. */
export const DATA_TYPES: readonly TritonDataType[] = [
  'TYPE_INVALID', 'TYPE_BOOL', 'TYPE_UINT8', 'TYPE_UINT16', 'TYPE_UINT32', 'TYPE_UINT64',
  'TYPE_INT8', 'TYPE_INT16', 'TYPE_INT32', 'TYPE_INT64', 'TYPE_FP16', 'TYPE_FP32',
  'TYPE_FP64', 'TYPE_STRING', 'TYPE_BF16',
];

/** model_config.proto `ModelInput.Format`, in enum-number order. */
export const INPUT_FORMATS = ['FORMAT_NONE', 'FORMAT_NHWC', 'FORMAT_NCHW'] as const;

const VARIABLE_DIM = -1;

export const INPUT_SCHEMA: MessageSchema = {
  known: ['name', 'data_type', 'format', 'dims', 'reshape', 'is_shape_tensor', 'allow_ragged_batch', 'optional'],
  ignored: ['is_non_linear_format_io'],
};

export const OUTPUT_SCHEMA: MessageSchema = {
  known: ['name', 'data_type', 'dims', 'reshape', 'label_filename', 'is_shape_tensor'],
  ignored: ['is_non_linear_format_io'],
};

const RESHAPE_SCHEMA: MessageSchema = { known: ['shape'] };

export function readInputs(config: MessageReader): ModelInput[] {
  const inputs = config.messages('input', INPUT_SCHEMA).map(readInput);
  rejectDuplicateNames(config, 'input');
  return inputs;
}

export function readOutputs(config: MessageReader): ModelOutput[] {
  const outputs = config.messages('output', OUTPUT_SCHEMA).map((output): ModelOutput => ({
    name: readTensorName(output),
    data_type: readDataType(output),
    dims: readShape(output, 'dims'),
    ...readReshape(output),
    label_filename: output.string('label_filename'),
    is_shape_tensor: output.bool('is_shape_tensor'),
  }));
  rejectDuplicateNames(config, 'output');
  return outputs;
}

function readInput(input: MessageReader): ModelInput {
  const dims = readShape(input, 'dims');
  const format = input.enumValue('format', INPUT_FORMATS, 'FORMAT_NONE');
  // model_config.proto: image formats describe exactly the three non-batch dims (HWC or CHW).
  if (format !== 'FORMAT_NONE' && dims.length !== 3) {
    throw configError(input.context, input.childPath('dims'),
      `${format} needs exactly 3 dims, found ${dims.length}`, input.position('dims') ?? input.position('format'));
  }
  return {
    name: readTensorName(input),
    data_type: readDataType(input),
    format,
    dims,
    ...readReshape(input),
    is_shape_tensor: input.bool('is_shape_tensor'),
    allow_ragged_batch: input.bool('allow_ragged_batch'),
    optional: input.bool('optional'),
  };
}

function readTensorName(tensor: MessageReader): string {
  const name = tensor.string('name');
  if (name === '') throw tensor.fail("expected a non-empty 'name'", tensor.position('name'));
  return name;
}

function readDataType(tensor: MessageReader): TritonDataType {
  const dataType = tensor.enumValue('data_type', DATA_TYPES, 'TYPE_INVALID');
  if (dataType === 'TYPE_INVALID') {
    const message = tensor.has('data_type') ? 'must not be TYPE_INVALID' : 'is required (one of TYPE_BOOL ... TYPE_BF16)';
    throw configError(tensor.context, tensor.childPath('data_type'), message,
      tensor.position('data_type') ?? tensor.node.position);
  }
  return dataType;
}

/** Each dimension is a size >= 1, or -1 for a size the request decides. */
function readShape(message: MessageReader, name: string): number[] {
  return message.values(name).map(({ value, path }) => {
    const dim = message.asInt(value, path, { min: VARIABLE_DIM });
    if (dim === 0) {
      throw configError(message.context, path, 'expected -1 (variable size) or a size >= 1, found 0', value.position);
    }
    return dim;
  });
}

function readReshape(tensor: MessageReader): { reshape?: { shape: number[] } } {
  const reshape = tensor.message('reshape', RESHAPE_SCHEMA);
  return reshape ? { reshape: { shape: readShape(reshape, 'shape') } } : {};
}

function rejectDuplicateNames(config: MessageReader, field: 'input' | 'output'): void {
  const seen = new Map<string, string>();
  for (const tensor of config.messages(field, field === 'input' ? INPUT_SCHEMA : OUTPUT_SCHEMA)) {
    const name = tensor.string('name');
    const earlier = seen.get(name);
    if (earlier !== undefined) {
      throw configError(tensor.context, tensor.childPath('name'),
        `${field} name ${quoted(name)} is already used by ${earlier}`, tensor.position('name'));
    }
    seen.set(name, tensor.path);
  }
}
