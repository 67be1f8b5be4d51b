/** The model repository: Triton-layout folders, `config.pbtxt` parsing and validation, versions. */
export type {
  DynamicBatching, InstanceGroup, InstanceKind, ModelConfig, ModelInput, ModelOutput,
  ModelParameter, QueuePolicy, TimeoutAction, TritonDataType, VersionPolicy,
} from './model-config-types.js';
export { parseModelConfig, modelConfigFromJson, withParameterPosition } from './model-config.js';
export { parsePbtxt } from './pbtxt.js';
export type {
  PbtxtField, PbtxtMessage, PbtxtScalar, PbtxtValue, SourcePosition,
} from './pbtxt.js';
export { scanRepository, resolveVersions, CONFIG_FILE_NAME } from './scan.js';
export type { ModelEntry } from './scan.js';
export { resolveConfinedPath, isInside } from './confined-path.js';
