import { quoted } from '../errors.js';
import type {
  InstanceGroup, InstanceKind, ModelConfig, ModelParameter, VersionPolicy,
} from './model-config-types.js';
import { jsonToMessage, valueToJson, type MapEntryJson } from './json-tree.js';
import {
  MessageReader, configError, setMapEntry, type MessageSchema, type ReaderContext,
} from './message-reader.js';
import { DYNAMIC_BATCHING_SCHEMA, readDynamicBatching } from './model-config-batching.js';
import { readInputs, readOutputs } from './model-config-tensors.js';
import { parsePbtxt, type PbtxtMessage } from './pbtxt.js';

/** model_config.proto `ModelInstanceGroup.Kind`, in enum-number order. */
export const INSTANCE_KINDS: readonly InstanceKind[] = ['KIND_AUTO', 'KIND_GPU', 'KIND_CPU', 'KIND_MODEL'];

const INT32_MAX = 0x7fffffff;
/**
 * Instances per group: each is a process holding its own copy of the model, so a count in the
 * millions would exhaust the host long before it did anything useful.
 */
export const MAX_INSTANCE_COUNT = 64;

/** model_config.proto `oneof scheduling_choice`. */
const SCHEDULING_CHOICES = ['dynamic_batching', 'sequence_batching', 'ensemble_scheduling'];

const MODEL_CONFIG_SCHEMA: MessageSchema = {
  known: [
    'name', 'platform', 'backend', 'version_policy', 'max_batch_size', 'input', 'output',
    'instance_group', 'dynamic_batching', 'parameters', 'default_model_filename', 'model_transaction_policy',
  ],
  // Valid ModelConfig fields that sdserve does not act on: accepted so Triton configs load as-is.
  ignored: [
    'runtime', 'batch_input', 'batch_output', 'optimization', 'sequence_batching',
    'ensemble_scheduling', 'cc_model_filenames', 'metric_tags', 'model_warmup', 'model_operations',
    'model_repository_agents', 'response_cache', 'model_metrics',
  ],
};

/** Repeated fields and maps among the fields passed through; the rest are single messages or values. */
const REPEATED_FIELDS = new Set(['batch_input', 'batch_output', 'model_warmup']);
const MAP_FIELDS = new Set(['cc_model_filenames', 'metric_tags']);

const VERSION_POLICY_SCHEMA: MessageSchema = { known: ['latest', 'all', 'specific'] };
const INSTANCE_GROUP_SCHEMA: MessageSchema = {
  known: ['name', 'kind', 'count', 'gpus'],
  ignored: ['rate_limiter', 'secondary_devices', 'profile', 'passive', 'host_policy'],
};
const PARAMETER_SCHEMA: MessageSchema = { known: ['string_value'] };

/**
 * Parses and validates a `config.pbtxt`. Errors are `SdserveError('SDS_ERR_CONFIG')` naming
 * `file:line:column`, the field path, the value found and what was expected.
 */
export function parseModelConfig(text: string, file: string, modelDirName: string): ModelConfig {
  return readModelConfig(parsePbtxt(text, file), { file, origin: 'pbtxt' }, modelDirName);
}

/**
 * Validates a config given as protobuf JSON (the `config` override of the repository load API),
 * with the same checks as `parseModelConfig`. Field names may be proto or lowerCamelCase.
 */
export function modelConfigFromJson(json: unknown, modelDirName: string, source = 'config override'): ModelConfig {
  return readModelConfig(jsonToMessage(json, source), { file: source, origin: 'json' }, modelDirName);
}

function readModelConfig(tree: PbtxtMessage, context: ReaderContext, modelDirName: string): ModelConfig {
  const config = new MessageReader(tree, '', context, MODEL_CONFIG_SCHEMA);
  config.oneOf(SCHEDULING_CHOICES);

  const name = readName(config, modelDirName);
  const maxBatchSize = config.int('max_batch_size', 0, { min: 0, max: INT32_MAX });
  const dynamicBatching = config.message('dynamic_batching', DYNAMIC_BATCHING_SCHEMA);
  return {
    name,
    platform: config.string('platform'),
    backend: config.string('backend'),
    version_policy: readVersionPolicy(config),
    max_batch_size: maxBatchSize,
    input: readInputs(config),
    output: readOutputs(config),
    instance_group: readInstanceGroups(config, name),
    ...(dynamicBatching ? { dynamic_batching: readDynamicBatching(dynamicBatching, maxBatchSize) } : {}),
    parameters: readParameters(config),
    default_model_filename: config.string('default_model_filename'),
    model_transaction_policy: {
      decoupled: config.message('model_transaction_policy', { known: ['decoupled'] })?.bool('decoupled') ?? false,
    },
    ...passedThrough(config),
  };
}

/**
 * The fields sdserve does not act on, as protobuf JSON: backends get the whole config, as
 * Triton hands it to `initialize`.
 */
function passedThrough(config: MessageReader): Record<string, unknown> {
  const fields: Record<string, unknown> = {};
  for (const name of MODEL_CONFIG_SCHEMA.ignored ?? []) {
    const values = config.values(name).map(({ value }) => valueToJson(value));
    if (values.length === 0) continue;
    if (REPEATED_FIELDS.has(name)) fields[name] = values;
    else if (MAP_FIELDS.has(name)) fields[name] = Object.fromEntries(values.map((entry) => [(entry as MapEntryJson).key, (entry as MapEntryJson).value]));
    else fields[name] = values.at(-1);
  }
  return fields;
}

/** Triton takes the name from the model folder and refuses a config that names another. */
function readName(config: MessageReader, modelDirName: string): string {
  const name = config.string('name');
  if (name !== '' && name !== modelDirName) {
    throw configError(config.context, 'name',
      `${quoted(name)} does not match the model directory name ${quoted(modelDirName)}`,
      config.position('name'));
  }
  return modelDirName;
}

function readVersionPolicy(config: MessageReader): VersionPolicy {
  const policy = config.message('version_policy', VERSION_POLICY_SCHEMA);
  if (!policy) return { latest: { num_versions: 1 } };
  policy.oneOf(VERSION_POLICY_SCHEMA.known);

  const specific = policy.message('specific', { known: ['versions'] });
  if (specific) {
    const versions = specific.intList('versions', { min: 1 });
    if (versions.length === 0) throw specific.fail('expected at least one entry in versions');
    return { specific: { versions } };
  }
  if (policy.message('all', { known: [] })) return { all: {} };
  const latest = policy.message('latest', { known: ['num_versions'] });
  return { latest: { num_versions: latest?.int('num_versions', 1, { min: 1, max: 0xffffffff }) ?? 1 } };
}

function readInstanceGroups(config: MessageReader, modelName: string): InstanceGroup[] {
  const groups = config.messages('instance_group', INSTANCE_GROUP_SCHEMA);
  // Without instance_group Triton places one instance per GPU; the core falls back to CPU.
  if (groups.length === 0) return [{ name: `${modelName}_0`, kind: 'KIND_GPU', count: 1, gpus: [] }];

  const read = groups.map((group, index) => {
    const kind = group.enumValue('kind', INSTANCE_KINDS, 'KIND_AUTO');
    const gpus = group.intList('gpus', { min: 0, max: INT32_MAX });
    if (gpus.length > 0 && (kind === 'KIND_CPU' || kind === 'KIND_MODEL')) {
      throw configError(group.context, group.childPath('gpus'),
        `cannot be given for ${kind}; only KIND_GPU and KIND_AUTO run on listed GPUs`, group.position('gpus'));
    }
    return {
      name: group.string('name') || `${modelName}_${index}`,
      kind,
      count: group.int('count', 1, { min: 1, max: MAX_INSTANCE_COUNT }),
      gpus,
    };
  });
  // Listed GPUs multiply the count; unlisted ones are bounded by the host's GPUs.
  const total = read.reduce((sum, group) => sum + group.count * Math.max(1, group.gpus.length), 0);
  if (total > MAX_INSTANCE_COUNT) {
    throw configError(config.context, 'instance_group',
      `asks for ${total} instances in all (count times listed gpus, over every group); at most ${MAX_INSTANCE_COUNT} are allowed`,
      config.position('instance_group'));
  }
  return read;
}

/** Where each parameter of a parsed config was set ("file:line:column"), by its parameters object. */
const parameterPositions = new WeakMap<object, Map<string, string>>();

/**
 * A backend's load error about one of the config's parameters ("... config parameter 'stepz' is
 * not known ...") with the place that parameter is set prefixed, as the parser's own errors
 * read; any other message as it is.
 */
export function withParameterPosition(message: string, config: ModelConfig): string {
  const name = /config parameter '([^']+)'/.exec(message)?.[1];
  const where = name === undefined ? undefined : parameterPositions.get(config.parameters)?.get(name);
  return where === undefined ? message : `${where}: parameters: ${message}`;
}

function readParameters(config: MessageReader): Record<string, ModelParameter> {
  const parameters: Record<string, ModelParameter> = {};
  const positions = new Map<string, string>();
  parameterPositions.set(parameters, positions);
  for (const entry of config.mapEntries('parameters', PARAMETER_SCHEMA)) {
    if (entry.key === undefined) {
      throw configError(config.context, entry.path, "map entry needs a 'key'", entry.position);
    }
    const key = config.asString(entry.key, `${entry.path}.key`);
    if (Object.hasOwn(parameters, key)) {
      throw configError(config.context, `${entry.path}.key`, `parameter ${quoted(key)} is set more than once`, entry.key.position);
    }
    setMapEntry(parameters, key, { string_value: entry.value?.string('string_value') ?? '' });
    const position = entry.key.position ?? entry.position;
    if (position !== undefined) positions.set(key, `${config.context.file}:${position.line}:${position.column}`);
  }
  return parameters;
}
