/**
 * Shape checks for the metadata a backend sends (docs/backend-protocol.md, "Messages"): a backend
 * is another program, so the core trusts none of its frames until they match these schemas.
 * Compiled once, at module load.
 */
import { Ajv, type ValidateFunction } from 'ajv';
import {
  PROTOCOL_VERSION,
  type CapabilitiesMeta, type HelloMeta, type LoadResponseMeta, type ProgressMeta, type ResponseNotifyMeta,
} from './messages.js';

const ajv = new Ajv({ allowUnionTypes: true, strict: true });

const PARAMETER_TYPES = ['integer', 'number', 'string', 'boolean'];

const parameterSpecSchema = {
  type: 'object',
  required: ['type'],
  properties: {
    type: {
      anyOf: [
        { enum: PARAMETER_TYPES },
        { type: 'array', items: { enum: PARAMETER_TYPES }, minItems: 1 },
      ],
    },
    minimum: { type: 'number' },
    maximum: { type: 'number' },
    multiple_of: { type: 'number', exclusiveMinimum: 0 },
    enum: { type: 'array', items: { type: ['string', 'number'] } },
    default: { type: ['string', 'number', 'boolean', 'null'] },
    aliases: { type: 'array', items: { type: 'string' } },
    description: { type: 'string' },
    examples: { type: 'array', items: { type: 'string' } },
  },
};

const capabilitiesSchema = {
  type: 'object',
  required: ['tasks', 'batching', 'parameters'],
  properties: {
    tasks: { type: 'array', items: { type: 'string' } },
    batching: { enum: ['step', 'request'] },
    max_images: { type: 'integer', minimum: 1 },
    parameters: { type: 'object', additionalProperties: parameterSpecSchema },
    config_parameters: { type: 'array', items: { type: 'string' } },
    inputs: {
      type: 'array',
      items: {
        type: 'object',
        required: ['name', 'datatype', 'dims'],
        properties: {
          name: { type: 'string', minLength: 1 },
          datatype: { type: 'string', minLength: 1 },
          dims: { type: 'array', items: { type: 'integer', minimum: -1 } },
          optional: { type: 'boolean' },
        },
      },
    },
    image_output: { type: 'string', minLength: 1 },
    encoded_output: { type: 'string', minLength: 1 },
    refiner: { type: 'string', minLength: 1 },
  },
};

const checkHello = ajv.compile<HelloMeta>({
  type: 'object',
  required: ['protocol', 'pid', 'python'],
  properties: {
    protocol: { type: 'integer' },
    pid: { type: 'integer' },
    python: { type: 'string' },
    torch: { type: ['string', 'null'] },
  },
});

const checkLoadResponse = ajv.compile<LoadResponseMeta>({
  type: 'object',
  required: ['cuda'],
  properties: {
    cuda: { type: ['string', 'null'] },
    capabilities: capabilitiesSchema,
  },
});

const checkProgress = ajv.compile<ProgressMeta>({
  type: 'object',
  required: ['request_index', 'step', 'steps'],
  properties: {
    request_id: { type: 'string' },
    request_index: { type: 'integer', minimum: 0 },
    step: { type: 'integer', minimum: 0 },
    steps: { type: 'integer', minimum: 0 },
    preview_shape: { type: 'array', items: { type: 'integer', minimum: 0 }, minItems: 3, maxItems: 3 },
  },
});

const checkResponseNotify = ajv.compile<ResponseNotifyMeta>({
  type: 'object',
  required: ['request_index', 'final'],
  properties: {
    request_index: { type: 'integer', minimum: 0 },
    response: { type: 'object' },
    final: { type: 'boolean' },
  },
});

/** Why `metadata` does not match `check`, or undefined when it does. */
function mismatch(check: ValidateFunction, metadata: unknown, what: string): string | undefined {
  if (check(metadata)) return undefined;
  const error = check.errors?.[0];
  const where = error?.instancePath ? `${what}${error.instancePath.replaceAll('/', '.')}` : what;
  return `${where} ${error?.message ?? 'is malformed'}`;
}

/** Why a HelloNotify is unacceptable (malformed, or another protocol version), or undefined. */
export function helloProblem(metadata: unknown): string | undefined {
  const problem = mismatch(checkHello, metadata, 'HelloNotify');
  if (problem !== undefined) return problem;
  const { protocol } = metadata as HelloMeta;
  if (protocol !== PROTOCOL_VERSION) {
    return `the backend speaks protocol ${protocol}, this server speaks protocol ${PROTOCOL_VERSION}: `
      + 'the Python package and the server come from different versions';
  }
  return undefined;
}

/** Why a successful LoadResponse is malformed (its capabilities included), or undefined. */
export function loadResponseProblem(metadata: unknown): string | undefined {
  const problem = mismatch(checkLoadResponse, metadata, 'LoadResponse');
  if (problem !== undefined) return problem;
  return capabilitiesProblem((metadata as LoadResponseMeta).capabilities);
}

/** Facts the schema cannot say: ranges that contradict themselves, defaults outside their range. */
function capabilitiesProblem(capabilities: CapabilitiesMeta | undefined): string | undefined {
  for (const [name, spec] of Object.entries(capabilities?.parameters ?? {})) {
    if (spec.minimum !== undefined && spec.maximum !== undefined && spec.minimum > spec.maximum) {
      return `LoadResponse.capabilities.parameters.${name}: minimum ${spec.minimum} exceeds maximum ${spec.maximum}`;
    }
  }
  return undefined;
}

export function progressProblem(metadata: unknown): string | undefined {
  return mismatch(checkProgress, metadata, 'ProgressNotify');
}

export function responseNotifyProblem(metadata: unknown): string | undefined {
  return mismatch(checkResponseNotify, metadata, 'ResponseNotify');
}
