import type { CapabilitiesMeta } from '../backend/messages.js';
import type { ModelStatistics } from './statistics.js';
import type { ModelConfig } from '../repository/model-config-types.js';
import type {
  AnswerCallback, InferRequest, InferResponse, ModelMetadata, ModelStatus, ProgressCallback, QueuePositionCallback, ServerMetadata,
} from './types.js';

/**
 * What every front end (HTTP, gRPC) calls: the data plane. It holds the protocol logic and no
 * transport. Methods throw `SdserveError` (src/errors.ts) for anything the caller must see.
 */
export interface InferenceCore {
  serverMetadata(): ServerMetadata;
  isLive(): boolean;
  isReady(): boolean;
  /** True from the start of a graceful shutdown: readiness answers 503 instead of 400. */
  isShuttingDown(): boolean;
  /** `version` empty or absent: any ready version. */
  isModelReady(name: string, version?: string): boolean;
  modelMetadata(name: string, version?: string): ModelMetadata;
  modelConfig(name: string, version?: string): ModelConfig;
  /** What the model's backend declared it takes; undefined for models that declare nothing. */
  modelCapabilities(name: string, version?: string): CapabilitiesMeta | undefined;
  /**
   * Resolves when the response is complete; `signal` aborts a request the client gave up on;
   * `onProgress` hears of each denoising step of backends that report them, `onQueuePosition`
   * of the request's place in the queue while it waits for an instance. A decoupled model must
   * answer with exactly one response here (Triton's generate); see `inferStream`.
   */
  infer(
    request: InferRequest, signal?: AbortSignal, onProgress?: ProgressCallback, onQueuePosition?: QueuePositionCallback,
  ): Promise<InferResponse>;
  /**
   * Every answer to `request` goes to `onAnswer` as it comes: each response of a decoupled model
   * (and its final flag, which may come alone), or a normal model's one response, final. Resolves
   * once the final answer was given; rejects when the request fails as a whole.
   */
  inferStream(
    request: InferRequest, onAnswer: AnswerCallback, signal?: AbortSignal, onProgress?: ProgressCallback,
    onQueuePosition?: QueuePositionCallback,
  ): Promise<void>;
  /** Triton's statistics extension: `name` absent for every model, `version` absent for every loaded version. */
  statistics(name?: string, version?: string): ModelStatistics[];
  repositoryIndex(readyOnly: boolean): ModelStatus[];
  loadModel(name: string, configOverride?: string): Promise<void>;
  unloadModel(name: string): Promise<void>;
}
