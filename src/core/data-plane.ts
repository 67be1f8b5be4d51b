import { SdserveError } from '../errors.js';
import type { CapabilitiesMeta } from '../backend/messages.js';
import type { ModelConfig } from '../repository/model-config-types.js';
import { toKServeDatatype } from './datatypes.js';
import type { InferenceCore } from './inference-core.js';
import type { ModelManager } from './model-manager.js';
import { checkRequestLimits } from './request-limits.js';
import type { ModelStatistics } from './statistics.js';
import type { RequestListeners, ServedModel } from './served-model.js';
import type {
  AnswerCallback, InferRequest, InferResponse, ModelMetadata, ModelStatus, ProgressCallback, QueuePositionCallback, ServerMetadata,
  StreamedAnswer,
} from './types.js';

export const SERVER_NAME = 'sdserve';
export const SERVER_VERSION = '0.1.0';
const EXTENSIONS = [
  'binary_tensor_data', 'model_repository', 'model_configuration', 'statistics', 'parameters', 'generate',
];

/** The protocol logic shared by the HTTP and gRPC front ends. */
export class DataPlane implements InferenceCore {
  private live = true;
  private draining = false;
  /** One controller per request in flight: a drain that runs out of time aborts them. */
  private readonly inFlight = new Set<AbortController>();
  private onIdle: (() => void) | undefined;

  constructor(private readonly models: ModelManager) {}

  serverMetadata(): ServerMetadata {
    return { name: SERVER_NAME, version: SERVER_VERSION, extensions: EXTENSIONS };
  }

  isLive(): boolean {
    return this.live;
  }

  /** Ready when live and every model the server was asked to load is ready (Triton's strict readiness). */
  isReady(): boolean {
    return this.live && !this.draining && this.models.attemptedStatuses()
      .every((row) => row.state === 'READY' && this.models.isReady(row.name, row.version));
  }

  isModelReady(name: string, version?: string): boolean {
    return !this.draining && this.models.isReady(name, version);
  }

  isShuttingDown(): boolean {
    return this.draining;
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

  modelCapabilities(name: string, version?: string): CapabilitiesMeta | undefined {
    return this.models.resolve(name, version).capabilities;
  }

  /**
   * 1. refuse while draining  2. resolve the model  3. bound its cost  4. validate against its
   * config, queue, await the result. A decoupled model's answers are gathered: exactly one
   * response is the result.
   */
  async infer(
    request: InferRequest, signal?: AbortSignal, onProgress?: ProgressCallback, onQueuePosition?: QueuePositionCallback,
  ): Promise<InferResponse> {
    const served = this.admit(request);
    if (!served.isDecoupled) return this.run(served, request, signal, { onProgress, onQueuePosition });
    const answers: StreamedAnswer[] = [];
    await this.run(served, request, signal, { onProgress, onQueuePosition, onAnswer: (answer) => answers.push(answer) });
    const failed = answers.find((answer) => answer.error !== undefined);
    if (failed?.error !== undefined) throw failed.error;
    const responses = answers.flatMap((answer) => (answer.response === undefined ? [] : [answer.response]));
    if (responses.length !== 1) {
      throw new SdserveError('SDS_ERR_UNSUPPORTED', `model '${request.model_name}' is decoupled and sent ${responses.length} responses `
        + 'to this request; this endpoint answers with exactly one: use generate_stream or the gRPC ModelStreamInfer RPC');
    }
    return responses[0];
  }

  async inferStream(
    request: InferRequest, onAnswer: AnswerCallback, signal?: AbortSignal, onProgress?: ProgressCallback,
    onQueuePosition?: QueuePositionCallback,
  ): Promise<void> {
    const served = this.admit(request);
    if (!served.isDecoupled) {
      onAnswer({ response: await this.run(served, request, signal, { onProgress, onQueuePosition }), final: true });
      return;
    }
    await this.run(served, request, signal, {
      onProgress,
      onQueuePosition,
      onAnswer: (answer) => onAnswer(answer.response === undefined ? answer : { ...answer, response: { ...answer.response, id: request.id } }),
    });
  }

  /** Refuses while draining, resolves the model and bounds the request's cost. */
  private admit(request: InferRequest): ServedModel {
    if (this.draining) throw shuttingDown();
    const served = this.models.resolve(request.model_name, request.model_version);
    checkRequestLimits(request, served.config, served.capabilities);
    return served;
  }

  private run(served: ServedModel, request: InferRequest, signal: AbortSignal | undefined, listeners: RequestListeners): Promise<InferResponse> {
    const controller = new AbortController();
    this.inFlight.add(controller);
    return served.infer(request, signal ? AbortSignal.any([signal, controller.signal]) : controller.signal, listeners)
      .then((response) => ({ ...response, id: request.id }))
      .finally(() => {
        this.inFlight.delete(controller);
        if (this.inFlight.size === 0) this.onIdle?.();
      });
  }

  /**
   * The first step of a graceful exit: readiness turns false and new requests are refused at
   * once (503 / UNAVAILABLE, so a load balancer sends them elsewhere), while the requests in
   * flight run to their end. Resolves true once they all have, or false after `timeoutMs` (Triton's
   * --exit-timeout-secs), once the ones still running were aborted and answered (or `abortGraceMs` passed).
   */
  async drain(timeoutMs: number, abortGraceMs = 10_000): Promise<boolean> {
    this.draining = true;
    if (await this.idleWithin(timeoutMs)) return true;
    const reason = new SdserveError('SDS_ERR_SHUTTING_DOWN',
      `the server is shutting down and the request was still running after the exit timeout (${timeoutMs / 1000} s)`);
    for (const controller of this.inFlight) controller.abort(reason);
    // Their answers go out before the front ends close.
    await this.idleWithin(abortGraceMs);
    return false;
  }

  private async idleWithin(timeoutMs: number): Promise<boolean> {
    if (this.inFlight.size === 0) return true;
    let timer: NodeJS.Timeout | undefined;
    const idle = await Promise.race([
      new Promise<true>((resolve) => { this.onIdle = () => resolve(true); }),
      new Promise<false>((resolve) => { timer = setTimeout(() => resolve(false), timeoutMs); }),
    ]);
    clearTimeout(timer);
    this.onIdle = undefined;
    return idle;
  }

  /** Requests accepted and not yet answered. */
  get requestsInFlight(): number {
    return this.inFlight.size;
  }

  statistics(name?: string, version?: string): ModelStatistics[] {
    return this.models.statistics(name, version);
  }

  pendingRequests(): Array<{ name: string; version: string; pending: number }> {
    return this.models.pendingRequests();
  }

  backendRestarts(): Array<{ name: string; version: string; restarts: number }> {
    return this.models.backendRestarts();
  }

  repositoryIndex(readyOnly: boolean): ModelStatus[] {
    const rows = this.models.statuses();
    return readyOnly ? rows.filter((r) => r.state === 'READY') : rows;
  }

  loadModel(name: string, configOverride?: string): Promise<void> {
    if (this.draining) return Promise.reject(shuttingDown());
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

function shuttingDown(): SdserveError {
  return new SdserveError('SDS_ERR_SHUTTING_DOWN', 'the server is shutting down and accepts no new requests');
}
