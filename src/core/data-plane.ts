import type { ModelConfig } from '../repository/model-config-types.js';
import { toKServeDatatype } from './datatypes.js';
import type { InferenceCore } from './inference-core.js';
import type { ModelManager } from './model-manager.js';
import type { ModelStatistics } from './statistics.js';
import type {
  InferRequest, InferResponse, ModelMetadata, ModelStatus, ProgressCallback, ServerMetadata,
} from './types.js';

export const SERVER_NAME = 'sdserve';
export const SERVER_VERSION = '0.1.0';
const EXTENSIONS = [
  'binary_tensor_data', 'model_repository', 'model_configuration', 'statistics', 'parameters', 'generate',
];

/** The protocol logic shared by the HTTP and gRPC front ends. */
export class DataPlane implements InferenceCore {
  private live = true;

  constructor(private readonly models: ModelManager) {}

  serverMetadata(): ServerMetadata {
    return { name: SERVER_NAME, version: SERVER_VERSION, extensions: EXTENSIONS };
  }

  isLive(): boolean {
    return this.live;
  }

  /** Ready when live and every model the server was asked to load is ready (Triton's strict readiness). */
  isReady(): boolean {
    return this.live && this.models.attemptedStatuses().every((row) => row.state === 'READY');
  }

  isModelReady(name: string, version?: string): boolean {
    return this.models.isReady(name, version);
  }

  modelMetadata(name: string, version?: string): ModelMetadata {
    const served = this.models.resolve(name, version);
    const config = served.config;
    const batchDim = config.max_batch_size > 0 ? [-1] : [];
    const tensors = (list: ModelConfig['input'] | ModelConfig['output']) => list.map((t) => ({
      name: t.name, datatype: toKServeDatatype(t.data_type), shape: [...batchDim, ...t.dims],
    }));
    const versions = this.models.statuses().filter((r) => r.name === name && r.state === 'READY').map((r) => r.version);
    return {
      name, versions, platform: config.platform || config.backend, inputs: tensors(config.input), outputs: tensors(config.output),
    };
  }

  modelConfig(name: string, version?: string): ModelConfig {
    return this.models.resolve(name, version).config;
  }

  /** 1. resolve the model  2. validate against its config  3. queue  4. await the batch's result. */
  infer(request: InferRequest, signal?: AbortSignal, onProgress?: ProgressCallback): Promise<InferResponse> {
    try {
      const served = this.models.resolve(request.model_name, request.model_version);
      return served.infer(request, signal, onProgress).then((response) => ({ ...response, id: request.id }));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  statistics(name?: string, version?: string): ModelStatistics[] {
    return this.models.statistics(name, version);
  }

  backendRestarts(): Array<{ name: string; version: string; restarts: number }> {
    return this.models.backendRestarts();
  }

  repositoryIndex(readyOnly: boolean): ModelStatus[] {
    const rows = this.models.statuses();
    return readyOnly ? rows.filter((r) => r.state === 'READY') : rows;
  }

  loadModel(name: string, configOverride?: string): Promise<void> {
    this.models.assertModelControl();
    return this.models.loadModel(name, configOverride);
  }

  unloadModel(name: string): Promise<void> {
    this.models.assertModelControl();
    return this.models.unloadModel(name);
  }

  async shutdown(): Promise<void> {
    this.live = false;
    await this.models.stop();
  }
}
