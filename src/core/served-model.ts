import path from 'node:path';
import type { BackendSpareSource, CapabilitiesMeta } from '../backend/index.js';
import { loadFailureCode, quoted, SdserveError, type ErrorCode } from '../errors.js';
import type { Logger } from '../logger.js';
import { withParameterPosition } from '../repository/index.js';
import type { ModelConfig, ModelInput, ModelOutput, QueuePolicy } from '../repository/model-config-types.js';
import { fromKServeDatatype } from './datatypes.js';
import {
  RequestScheduler, type QueuePolicyLimits, type RequestProgress, type SchedulerPolicy,
} from '../scheduler/index.js';
import { executionDeadline } from './execution-deadline.js';
import { initializeConfig } from './initialize-config.js';
import { placeInstances } from './instance-placement.js';
import { ModelInstance, type BackendStartOptions } from './model-instance.js';
import { stageTimings, type StageTimings } from './stage-timings.js';
import { StatisticsRecorder, type ModelStatistics } from './statistics.js';
import type { AnswerCallback, InferRequest, InferResponse, ModelState, ProgressCallback, QueuePositionCallback } from './types.js';
import { checkRequestParameters } from './request-parameters.js';
import { validateRequest } from './validate-request.js';

/**
 * Backends never reach a model hub, and the libraries' progress bars and advice would only
 * clutter the server log.
 */
const BACKEND_ENV = {
  HF_HUB_OFFLINE: '1',
  HF_HUB_DISABLE_PROGRESS_BARS: '1',
  TRANSFORMERS_VERBOSITY: 'error',
  DIFFUSERS_VERBOSITY: 'error',
  TRANSFORMERS_NO_ADVISORY_WARNINGS: '1',
};

/** How backend processes are started on this host. */
export interface BackendRuntime {
  pythonExecutable: string;
  projectRoot: string;
  /** Engines and compiled kernels go under `<engineCacheDir>/<model>/<version>/`. */
  engineCacheDir: string;
  /** The GPUs backends may use, as CUDA_VISIBLE_DEVICES names them (detectGpus). */
  gpus: readonly string[];
  startTimeoutMs: number;
  loadTimeoutMs: number;
  stopGraceMs: number;
  logger: Logger;
  /** Backends started ahead of their loads (`--backend-prestart`); none when absent. */
  spares?: BackendSpareSource;
}

/** How this host spawns a backend whose own environment adds `env` (a GPU's CUDA_VISIBLE_DEVICES). */
export function backendSpawnOptions(runtime: BackendRuntime, env: Record<string, string>): Pick<BackendStartOptions, 'pythonExecutable' | 'pythonPath' | 'env'> {
  return {
    pythonExecutable: runtime.pythonExecutable,
    pythonPath: [path.join(runtime.projectRoot, 'python')],
    // Bytecode of a repository's Python models goes to the cache too: nothing is written into
    // the repository, which may be a read-only volume.
    env: { ...BACKEND_ENV, PYTHONPYCACHEPREFIX: path.join(runtime.engineCacheDir, 'python-bytecode'), ...env },
  };
}

/** What hears of a request as it runs: its steps, its place in the queue, a decoupled model's answers. */
export interface RequestListeners {
  onProgress?: ProgressCallback;
  onQueuePosition?: QueuePositionCallback;
  onAnswer?: AnswerCallback;
}

/** One version of one model: its instances and the scheduler in front of them. */
export class ServedModel {
  state: ModelState = 'UNAVAILABLE';
  reason = 'unloaded';
  /** Why the last load failed, as whose error: SDS_ERR_CONFIG when the config was refused, else the server's. */
  loadFailure: ErrorCode | undefined;
  private instances: ModelInstance[] = [];
  private readonly scheduler: RequestScheduler;
  private readonly stats = new StatisticsRecorder();
  /** What the backend declared it takes (LoadResponse); undefined: Triton's behaviour, parameters unchecked. */
  capabilities: CapabilitiesMeta | undefined;
  /** Per input name, the forms its backend declared (see validateRequest). */
  private inputForms: Map<string, ModelInput[]> = new Map();
  /** The config as served: the repository's, completed with the outputs the backend declared. */
  config: ModelConfig;

  constructor(
    private readonly repositoryConfig: ModelConfig,
    readonly modelDir: string,
    readonly version: number,
    /** The checked model file this version runs (see model-files.ts). */
    private readonly modelFile: string,
    private readonly runtime: BackendRuntime,
  ) {
    this.config = repositoryConfig;
    this.scheduler = new RequestScheduler(`${repositoryConfig.name}:${version}`, schedulerPolicy(repositoryConfig),
      (batchSize, computeNs, responses) => this.stats.recordExecution(batchSize, computeNs, executionStages(responses)));
  }

  get label(): string {
    return `${this.config.name} (version ${this.version})`;
  }

  /** READY with an instance that can take a request now: not every one dead, restarting or stuck past its deadline. */
  get isServing(): boolean {
    return this.state === 'READY' && this.instances.some((instance) => instance.isAvailable && !instance.isStuck);
  }

  /** Requests queued for an instance: the load a replica cannot take on, what autoscaling follows. */
  get pendingRequests(): number {
    return this.scheduler.pendingRequests;
  }

  get backendRestarts(): number {
    return this.instances.reduce((n, instance) => n + instance.restarts, 0);
  }

  /** Starts every instance; any failure stops the others and leaves the version UNAVAILABLE. */
  async load(): Promise<void> {
    this.state = 'LOADING';
    this.reason = '';
    this.loadFailure = undefined;
    let specs;
    try {
      specs = this.instanceSpecs();
    } catch (err) {
      this.state = 'UNAVAILABLE';
      this.reason = (err as Error).message;
      this.loadFailure = loadFailureCode(err);
      return;
    }
    const instances = specs.map((spec) => new ModelInstance(
      spec.label, { ...this.startOptions(this.modelFile, spec.args, spec.env), label: spec.label }, this.runtime.logger,
      () => this.scheduler.notifyAvailable(), undefined, executionDeadline(this.config),
    ));
    const results = await Promise.allSettled(instances.map((instance) => instance.start()));
    const failure = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failure) {
      await Promise.all(instances.map((instance) => instance.stop(this.runtime.stopGraceMs)));
      this.state = 'UNAVAILABLE';
      this.reason = withParameterPosition((failure.reason as Error).message, this.config);
      this.loadFailure = loadFailureCode(failure.reason);
      return;
    }
    this.instances = instances;
    this.capabilities = instances[0]?.capabilities;
    this.config = completedConfig(this.repositoryConfig, this.capabilities);
    this.inputForms = declaredInputForms(this.capabilities);
    if (this.capabilities !== undefined) this.scheduler.setBatching(this.capabilities.batching);
    const deadline = executionDeadline(this.config, this.capabilities);
    for (const instance of instances) instance.setExecutionDeadline(deadline);
    for (const instance of instances) this.scheduler.addExecutor(instance);
    this.state = 'READY';
  }

  /** Waits for queued and running requests, then stops the instances. */
  async unload(): Promise<void> {
    this.state = 'UNLOADING';
    if (!this.instances.some((instance) => instance.isAvailable)) {
      // No instance will come to take them: waiting would never end.
      this.scheduler.rejectQueued(new SdserveError('SDS_ERR_MODEL_NOT_READY', `model ${this.label} was unloaded with no instance running`));
    }
    await this.scheduler.whenIdle();
    await Promise.all(this.instances.map((instance) => instance.stop(this.runtime.stopGraceMs)));
    this.instances = [];
    this.state = 'UNAVAILABLE';
    this.reason = 'unloaded';
  }

  statistics(): ModelStatistics {
    return this.stats.snapshot(this.config.name, String(this.version));
  }

  /** A decoupled model (Triton's term) may send any number of responses per request. */
  get isDecoupled(): boolean {
    return this.config.model_transaction_policy?.decoupled === true;
  }

  /**
   * 1. validate  2. queue  3. await the batch  4. record the statistics. `onAnswer` (decoupled
   * models) hears each answer; the result is then a response of no outputs.
   */
  async infer(request: InferRequest, signal: AbortSignal | undefined, listeners: RequestListeners = {}): Promise<InferResponse> {
    const { onProgress, onQueuePosition, onAnswer } = listeners;
    const startNs = process.hrtime.bigint();
    const elapsedNs = () => Number(process.hrtime.bigint() - startNs);
    const internalId = `sdserve-${nextRequestNumber++}`;
    try {
      const batchSize = validateRequest(request, this.config, this.inputForms);
      const { priority, timeout, ...sent } = request.parameters;
      const parameters = checkRequestParameters(sent, this.capabilities, this.config.name);
      const scheduled = {
        ...request,
        // Unique, so that cancelling one request never touches another client's of the same id;
        // the data plane answers with the client's own id.
        id: internalId,
        model_version: String(this.version),
        parameters,
      };
      const result = await this.scheduler.enqueue(scheduled, batchSize, {
        priority: queueParameter(priority, 'priority'), timeoutUs: queueParameter(timeout, 'timeout'), signal,
        onProgress: onProgress && progressReporter(onProgress), onQueuePosition, onAnswer,
      });
      this.stats.recordSuccess(batchSize, elapsedNs(), result.queueNs, result.computeNs, stageTimings(result.response));
      this.logAccess(request, internalId, 'OK', result.queueNs, result.computeNs);
      return result.response;
    } catch (err) {
      this.stats.recordFailure(elapsedNs());
      this.logAccess(request, internalId, err instanceof SdserveError ? err.code : 'SDS_ERR_INTERNAL');
      throw err;
    }
  }

  /** `--log-verbose 1`: one line per request. */
  private logAccess(request: InferRequest, internalId: string, status: string, queueNs?: number, computeNs?: number): void {
    const ms = (ns: number | undefined) => (ns === undefined ? '-' : (ns / 1e6).toFixed(1));
    this.runtime.logger.debug(`request ${request.id || '-'} (${internalId}) model ${this.config.name} version ${this.version}: `
      + `${status}, queue ${ms(queueNs)} ms, compute ${ms(computeNs)} ms`);
  }

  private instanceSpecs(): Array<{ label: string; args: Record<string, string>; env: Record<string, string> }> {
    const placements = placeInstances(this.config, this.runtime.gpus, () => this.runtime.logger.warn(
      `model '${this.config.name}': instance_group KIND_GPU but no GPU found; running on CPU`));
    return placements.map((placement) => ({
      label: placement.label,
      args: this.initializeArgs(placement.label, placement.kind, placement.deviceId),
      env: placement.cudaVisibleDevices === undefined ? {} as Record<string, string> : { CUDA_VISIBLE_DEVICES: placement.cudaVisibleDevices },
    }));
  }

  private initializeArgs(instanceName: string, kind: string, device: number): Record<string, string> {
    return {
      model_config: JSON.stringify(initializeConfig(this.config)),
      model_instance_kind: kind,
      model_instance_name: instanceName,
      model_instance_device_id: String(device),
      model_repository: this.modelDir,
      model_version: String(this.version),
      model_name: this.config.name,
      engine_cache_dir: this.runtime.engineCacheDir,
    };
  }

  private startOptions(modelFile: string, args: Record<string, string>, env: Record<string, string>): Omit<BackendStartOptions, 'label'> {
    return {
      ...backendSpawnOptions(this.runtime, env),
      modelFile,
      args,
      startTimeoutMs: this.runtime.startTimeoutMs,
      loadTimeoutMs: this.runtime.loadTimeoutMs,
      logger: this.runtime.logger,
      ...(this.runtime.spares !== undefined && { spares: this.runtime.spares }),
    };
  }
}

let nextRequestNumber = 1;

/** Turns step reports into progress with the elapsed time and an estimate of the time left. */
function progressReporter(onProgress: ProgressCallback): RequestProgress {
  let firstReport: number | undefined;
  return (step, steps, preview) => {
    const now = Date.now();
    firstReport ??= now;
    const elapsed = now - firstReport;
    const eta = step > 0 ? Math.round((elapsed / step) * (steps - step)) : 0;
    onProgress({ step, steps, elapsed_ms: elapsed, eta_ms: eta, ...(preview && { preview }) });
  };
}

/** Triton's `priority` and `timeout` request parameters: non-negative integers. */
function queueParameter(value: unknown, name: string): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0) {
    throw new SdserveError('SDS_ERR_INVALID_ARG', `request parameter '${name}' must be a non-negative integer, got ${quoted(value)}`);
  }
  return value;
}

/** Per input name, every form its backend declared (a name may be declared in several forms). */
function declaredInputForms(capabilities: CapabilitiesMeta | undefined): Map<string, ModelInput[]> {
  const forms = new Map<string, ModelInput[]>();
  for (const input of capabilities?.inputs ?? []) {
    const form: ModelInput = {
      name: input.name, data_type: fromKServeDatatype(input.datatype), format: 'FORMAT_NONE', dims: input.dims,
      is_shape_tensor: false, allow_ragged_batch: false, optional: input.optional ?? false,
    };
    forms.set(input.name, [...(forms.get(input.name) ?? []), form]);
  }
  return forms;
}

/**
 * The config a model is served with: an `encoded_output` the backend declared is added where the
 * repository's config lacks it, as Triton's auto-complete adds what a backend declares.
 */
function completedConfig(config: ModelConfig, capabilities: CapabilitiesMeta | undefined): ModelConfig {
  const encoded = capabilities?.encoded_output;
  if (encoded === undefined || config.output.some((output) => output.name === encoded)) return config;
  const output: ModelOutput = { name: encoded, data_type: 'TYPE_STRING', dims: [1], label_filename: '', is_shape_tensor: false };
  return { ...config, output: [...config.output, output] };
}

function schedulerPolicy(config: ModelConfig): SchedulerPolicy {
  const dynamic = config.dynamic_batching;
  const levels = Math.max(1, dynamic?.priority_levels ?? 0);
  const toLimits = (policy: QueuePolicy | undefined): QueuePolicyLimits => ({
    timeoutAction: policy?.timeout_action ?? 'REJECT',
    defaultTimeoutUs: policy?.default_timeout_microseconds ?? 0,
    allowTimeoutOverride: policy?.allow_timeout_override ?? false,
    maxQueueSize: policy?.max_queue_size ?? 0,
  });
  return {
    maxBatchSize: config.max_batch_size,
    dynamicBatching: dynamic && {
      maxQueueDelayUs: dynamic.max_queue_delay_microseconds,
      preferredBatchSizes: dynamic.preferred_batch_size,
    },
    // Until a backend declares its batching at load, requests go out as Triton's scheduler sends them.
    stepBatching: false,
    priorityLevels: levels,
    defaultPriorityLevel: dynamic?.priority_levels ? dynamic.default_priority_level : 1,
    queuePolicy: (level) => toLimits(dynamic?.priority_queue_policy[String(level)] ?? dynamic?.default_queue_policy),
  };
}

/** Triton's answers for a known model: no ready version, the version asked for absent, or not ready. */
export function notReady(name: string, version?: string, exists = true, reason?: string): SdserveError {
  if (!version) {
    return new SdserveError('SDS_ERR_NOT_FOUND', `Request for unknown model: ${quoted(name, "'")} has no available versions${reason ? `: ${reason}` : ''}`);
  }
  return exists
    ? new SdserveError('SDS_ERR_MODEL_NOT_READY', `Request for unknown model: ${quoted(name, "'")} version ${quoted(version, '')} is not at ready state`)
    : new SdserveError('SDS_ERR_NOT_FOUND', `Request for unknown model: ${quoted(name, "'")} version ${quoted(version, '')} is not found`);
}

/** One execution's stages: its requests were encoded in one frame (the same input time for all), each decoded on its own. */
function executionStages(responses: InferResponse[]): StageTimings {
  const stages = responses.map((response) => stageTimings(response));
  return {
    inputNs: Math.max(0, ...stages.map((stage) => stage.inputNs)),
    outputNs: stages.reduce((sum, stage) => sum + stage.outputNs, 0),
  };
}
