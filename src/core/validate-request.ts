import { quoted, SdserveError } from '../errors.js';
import type { ModelConfig, ModelInput } from '../repository/model-config-types.js';
import { toKServeDatatype } from './datatypes.js';
import type { InferRequest, Tensor } from './types.js';

/** Triton's `[request id: ...]` that starts a refusal: the caller's id escaped and bounded. */
export function requestIdTag(request: InferRequest): string {
  return `[request id: ${request.id ? quoted(request.id, '') : '<id_unknown>'}]`;
}

/**
 * Checks a request against its model's config, with Triton's wording, and returns its batch size
 * (1 for models that do not batch). `otherForms`: per input name, the other datatype and dims
 * its backend declared it accepts (an image as UINT8 pixels or as BYTES files); a tensor
 * matching one of them is accepted too.
 */
export function validateRequest(
  request: InferRequest, config: ModelConfig, otherForms: ReadonlyMap<string, ModelInput[]> = new Map(),
): number {
  const invalid = (message: string) => new SdserveError('SDS_ERR_INVALID_ARG', `${requestIdTag(request)} ${message}`);
  const byName = new Map(config.input.map((input) => [input.name, input]));

  // 1. every input is known and given once
  const seen = new Set<string>();
  for (const tensor of request.inputs) {
    if (!byName.has(tensor.name)) {
      // Triton reports this one without the request id
      throw new SdserveError('SDS_ERR_INVALID_ARG', `unexpected inference input ${quoted(tensor.name, "'")} for model '${config.name}'`);
    }
    if (seen.has(tensor.name)) throw invalid(`input ${quoted(tensor.name, "'")} is given more than once`);
    seen.add(tensor.name);
  }
  // 2. required inputs are present
  const missing = config.input.filter((input) => !input.optional && !seen.has(input.name));
  if (missing.length > 0) {
    const required = config.input.filter((i) => !i.optional).length;
    const expected = required === config.input.length
      ? `expected ${required} inputs` : `expected number of inputs between ${required} and ${config.input.length}`;
    const list = (names: string[]) => `[${names.map((n) => quoted(n, "'")).join(',')}]`;
    throw invalid(`${expected} but got ${request.inputs.length} inputs for model '${config.name}'. `
      + `Got input(s) ${list([...seen])}, but missing required input(s) ${list(missing.map((i) => i.name))}. `
      + 'Please provide all required input(s).');
  }
  // 3. datatype, shape and batch size of each input (the front ends checked the data against its shape)
  let batchSize: number | undefined;
  for (const tensor of request.inputs) {
    const declared = byName.get(tensor.name) as ModelInput;
    const input = (otherForms.get(tensor.name) ?? []).find((form) => matchesForm(tensor, form, config)) ?? declared;
    checkDatatype(tensor, input, config, invalid);
    const batch = checkShape(tensor, input, config, invalid);
    if (batchSize !== undefined && batch !== batchSize) {
      throw invalid(`inputs of model '${config.name}' disagree on the batch size (${batchSize} and ${batch})`);
    }
    batchSize = batch;
  }
  // 4. requested outputs exist
  const outputs = new Set(config.output.map((o) => o.name));
  for (const requested of request.outputs ?? []) {
    if (!outputs.has(requested.name)) {
      throw invalid(`unexpected inference output ${quoted(requested.name, "'")} for model '${config.name}'`);
    }
  }
  return batchSize ?? 1;
}

type Invalid = (message: string) => SdserveError;

function matchesForm(tensor: Tensor, form: ModelInput, config: ModelConfig): boolean {
  const dims = tensor.shape.slice(config.max_batch_size > 0 ? 1 : 0);
  return tensor.datatype === toKServeDatatype(form.data_type) && dims.length === form.dims.length
    && dims.every((d, i) => form.dims[i] === -1 || form.dims[i] === d);
}

function checkDatatype(tensor: Tensor, input: ModelInput, config: ModelConfig, invalid: Invalid): void {
  const expected = toKServeDatatype(input.data_type);
  if (tensor.datatype !== expected) {
    throw invalid(`inference input ${quoted(tensor.name, "'")} data-type is ${quoted(tensor.datatype, "'")}, but model '${config.name}' expects '${expected}'`);
  }
}

function checkShape(tensor: Tensor, input: ModelInput, config: ModelConfig, invalid: Invalid): number {
  const batching = config.max_batch_size > 0;
  const dims = tensor.shape.slice(batching ? 1 : 0);
  const expectedDims = input.dims;
  const matches = dims.length === expectedDims.length && dims.every((d, i) => expectedDims[i] === -1 || expectedDims[i] === d);
  if (!matches || (batching && tensor.shape.length === 0)) {
    const expected = batching ? [-1, ...expectedDims] : expectedDims;
    throw invalid(`unexpected shape for input ${quoted(tensor.name, "'")} for model '${config.name}'. `
      + `Expected [${expected.join(',')}], got [${tensor.shape.join(',')}]`);
  }
  if (!batching) return 1;
  const batch = tensor.shape[0];
  if (batch < 1 || batch > config.max_batch_size) {
    throw invalid(`inference request batch-size must be <= ${config.max_batch_size} for '${config.name}'`);
  }
  return batch;
}
