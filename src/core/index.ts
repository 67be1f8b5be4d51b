export { DataPlane, SERVER_NAME, SERVER_VERSION } from './data-plane.js';
export { detectGpus } from './gpu.js';
export { ModelManager, type ModelControlMode } from './model-manager.js';
export { formatModelTable } from './model-table.js';
export type { BackendRuntime } from './served-model.js';
export type { InferenceCore } from './inference-core.js';
export * from './types.js';
export * from './statistics.js';
export type { ModelFilePolicy } from './model-files.js';
