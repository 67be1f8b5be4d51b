import { SdserveError, toSdserveError } from '../errors.js';
import type { AnswerCallback, ImagePreview, InferRequest, InferResponse, StreamedAnswer } from '../core/types.js';
import { PriorityQueues } from './priority-queues.js';

/** Anything that runs requests: a backend instance. */
export interface BatchExecutor {
  readonly label: string;
  readonly isAvailable: boolean;
  /**
   * One execution over the whole batch; settles when every request is answered. With
   * `onAnswer`, a decoupled model's answers go to it as they arrive (see BackendProcess).
   */
  execute(requests: InferRequest[], onProgress?: StepListener, onAnswer?: AnswerListener): Promise<Array<InferResponse | SdserveError>>;
  /** One promise per request, each settled as soon as that request is answered. */
  executeEach(requests: InferRequest[], onProgress?: StepListener, onAnswer?: AnswerListener): Array<Promise<InferResponse>>;
  /** Asks the backend to drop these requests at its next step. */
  cancel(requestIds: string[]): void;
}

/** One request's progress: step `step` of `steps`, with a preview image on some steps. */
export type RequestProgress = (step: number, steps: number, preview?: ImagePreview) => void;

/** One answer of a decoupled model for request `requestIndex` of an execution. */
export type AnswerListener = (requestIndex: number, answer: StreamedAnswer) => void;

/** A backend's report that request `requestIndex` of an execution reached `step` of `steps`. */
export type StepListener = (requestIndex: number, step: number, steps: number, preview?: ImagePreview) => void;

export interface QueuePolicyLimits {
  timeoutAction: 'REJECT' | 'DELAY';
  /** 0: no timeout. */
  defaultTimeoutUs: number;
  allowTimeoutOverride: boolean;
  /** 0: unbounded. */
  maxQueueSize: number;
}

export interface SchedulerPolicy {
  /** 0: the model does not batch; each execution gets one request. */
  maxBatchSize: number;
  /** Absent: no dynamic batching, one request per execution (Triton's default scheduler). */
  dynamicBatching?: {
    maxQueueDelayUs: number;
    preferredBatchSizes: number[];
  };
  /**
   * Step-level batching: the backend merges requests into its running batch itself, so each
   * request goes to an instance as soon as that instance has room for its images.
   */
  stepBatching: boolean;
  /** 1 when the model has no priority levels. */
  priorityLevels: number;
  defaultPriorityLevel: number;
  queuePolicy(level: number): QueuePolicyLimits;
}

export interface EnqueueOptions {
  /** 1..priorityLevels, 1 first; 0 or absent: the default level. */
  priority?: number;
  /** Queue timeout in microseconds, honoured where the policy allows overrides. */
  timeoutUs?: number;
  signal?: AbortSignal;
  onProgress?: RequestProgress;
  /** Told the request's place in the queue (1: next) whenever it changes, while it is queued. */
  onQueuePosition?: (position: number) => void;
  /**
   * Every answer of a decoupled model, as it arrives; the request then settles with a response of
   * no outputs. Requests of a decoupled model all pass one, or none do (see DataPlane).
   */
  onAnswer?: AnswerCallback;
}

/** A response with the time its request spent queued and in the backend. */
export interface ScheduledResponse {
  response: InferResponse;
  queueNs: number;
  computeNs: number;
}

/** Told of every execution, for statistics. */
export type ExecutionObserver = (batchSize: number, computeNs: number, responses: InferResponse[]) => void;

interface Entry {
  request: InferRequest;
  batchSize: number;
  enqueuedAt: number;
  enqueuedNs: bigint;
  queueNs: number;
  state: 'queued' | 'running' | 'done';
  executor?: BatchExecutor;
  signal?: AbortSignal;
  onAbort?: () => void;
  onProgress?: RequestProgress;
  onQueuePosition?: (position: number) => void;
  /** The position last told to onQueuePosition. */
  toldPosition?: number;
  onAnswer?: AnswerCallback;
  timeoutTimer?: NodeJS.Timeout;
  resolve(result: ScheduledResponse): void;
  reject(error: SdserveError): void;
}

/**
 * Queues the requests of one model version (Triton's queue policy: priority levels, queue
 * timeouts, queue size limits) and hands them to whichever instance is free: whole batches for
 * request-level dynamic batching, single requests for step-level batching.
 */
export class RequestScheduler {
  private readonly queues: PriorityQueues<Entry>;
  private readonly executors: BatchExecutor[] = [];
  /** Images in flight per executor. */
  private readonly load = new Map<BatchExecutor, number>();
  private delayTimer: NodeJS.Timeout | undefined;
  private inFlight = 0;
  private idleWaiters: Array<() => void> = [];
  private stepBatching: boolean;

  constructor(
    private readonly modelLabel: string,
    private readonly policy: SchedulerPolicy,
    private readonly observeExecution: ExecutionObserver = () => {},
  ) {
    this.queues = new PriorityQueues(policy.priorityLevels);
    this.stepBatching = policy.stepBatching;
  }

  /** The batching mode a backend declared when it loaded (LoadResponse capabilities). */
  setBatching(mode: 'step' | 'request'): void {
    this.stepBatching = mode === 'step';
  }

  addExecutor(executor: BatchExecutor): void {
    this.executors.push(executor);
    this.load.set(executor, 0);
    this.pump();
  }

  /** Call when an executor may have become available again (e.g. after a restart). */
  notifyAvailable(): void {
    this.pump();
  }

  /** 1. check the level and its queue  2. arm the timeout and abort  3. queue and dispatch. */
  enqueue(request: InferRequest, batchSize: number, options: EnqueueOptions = {}): Promise<ScheduledResponse> {
    const level = options.priority || this.policy.defaultPriorityLevel;
    if (!Number.isInteger(level) || level < 1 || level > this.policy.priorityLevels) {
      return Promise.reject(new SdserveError('SDS_ERR_INVALID_ARG',
        `priority ${options.priority} is out of range for model '${this.modelLabel}': it has ${this.policy.priorityLevels} priority level(s)`));
    }
    const limits = this.policy.queuePolicy(level);
    if (limits.maxQueueSize > 0 && this.queues.levelSize(level) >= limits.maxQueueSize) {
      return Promise.reject(new SdserveError('SDS_ERR_QUEUE_FULL',
        `Exceeds maximum queue size of ${limits.maxQueueSize} for model '${this.modelLabel}'`));
    }
    if (options.signal?.aborted) return Promise.reject(cancelled());

    return new Promise<ScheduledResponse>((resolve, reject) => {
      const entry: Entry = {
        request, batchSize, enqueuedAt: Date.now(), enqueuedNs: process.hrtime.bigint(), queueNs: 0,
        state: 'queued', signal: options.signal, onProgress: options.onProgress, onQueuePosition: options.onQueuePosition,
        onAnswer: options.onAnswer, resolve, reject,
      };
      const timeoutUs = limits.allowTimeoutOverride && options.timeoutUs ? options.timeoutUs : limits.defaultTimeoutUs;
      if (timeoutUs > 0) {
        entry.timeoutTimer = setTimeout(() => this.expire(entry, limits.timeoutAction), timeoutUs / 1000);
      }
      if (options.signal) {
        entry.onAbort = () => this.abort(entry);
        options.signal.addEventListener('abort', entry.onAbort, { once: true });
      }
      this.queues.push(entry, level);
      this.pump();
    });
  }

  /** Rejects everything still queued; running requests finish. */
  rejectQueued(error: SdserveError): void {
    for (const entry of this.queues.drain()) this.settle(entry, error);
    this.resolveIdleWaiters();
  }

  /** Requests waiting for an instance (Triton's pending request count). */
  get pendingRequests(): number {
    return this.queues.size;
  }

  /** Resolves once nothing is queued or running. */
  whenIdle(): Promise<void> {
    if (this.queues.size === 0 && this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private expire(entry: Entry, action: QueuePolicyLimits['timeoutAction']): void {
    if (entry.state !== 'queued') return;
    if (action === 'DELAY') {
      this.queues.delay(entry);
      this.reportQueuePositions();
      return;
    }
    this.queues.remove(entry);
    this.settle(entry, new SdserveError('SDS_ERR_TIMEOUT', 'Request timeout expired'));
    this.reportQueuePositions();
    this.resolveIdleWaiters();
  }

  private abort(entry: Entry): void {
    if (entry.state === 'queued') {
      this.queues.remove(entry);
      this.settle(entry, cancelled());
      this.reportQueuePositions();
      this.resolveIdleWaiters();
    } else if (entry.state === 'running' && entry.request.id) {
      entry.executor?.cancel([entry.request.id]);
    }
  }

  private pump(): void {
    while (this.queues.size > 0) {
      const dispatched = this.stepBatching ? this.dispatchOne() : this.dispatchBatch();
      if (!dispatched) break;
    }
    this.reportQueuePositions();
  }

  /** Tells each waiting request that listens its place in the queue, when it changed. */
  private reportQueuePositions(): void {
    let position = 0;
    for (const entry of this.queues.ordered()) {
      position += 1;
      if (entry.onQueuePosition === undefined || entry.toldPosition === position) continue;
      entry.toldPosition = position;
      entry.onQueuePosition(position);
    }
  }

  /** Request-level: a whole batch to an idle executor. */
  private dispatchBatch(): boolean {
    const executor = this.executors.find((e) => e.isAvailable && this.load.get(e) === 0);
    if (!executor) return false;
    const batch = this.takeBatch();
    if (!batch) return false;
    void this.runBatch(executor, batch);
    return true;
  }

  /** Step-level: the next request to the least loaded executor with room for its images. */
  private dispatchOne(): boolean {
    const next = this.queues.ordered().next().value as Entry;
    const capacity = Math.max(1, this.policy.maxBatchSize);
    const executor = this.executors
      .filter((e) => e.isAvailable)
      .sort((a, b) => (this.load.get(a) ?? 0) - (this.load.get(b) ?? 0))
      .find((e) => (this.load.get(e) ?? 0) === 0 || (this.load.get(e) ?? 0) + next.batchSize <= capacity);
    if (!executor) return false;
    this.queues.remove(next);
    void this.runOne(executor, next);
    return true;
  }

  /** 1. fill up to the limit  2. wait for more if allowed  3. hand out the batch. */
  private takeBatch(): Entry[] | undefined {
    const dynamic = this.policy.dynamicBatching;
    const ordered = [...this.queues.ordered()];
    let batch = ordered.slice(0, 1);
    if (dynamic && this.policy.maxBatchSize > 0) {
      let total = 0;
      batch = [];
      for (const entry of ordered) {
        if (total + entry.batchSize > this.policy.maxBatchSize) break;
        total += entry.batchSize;
        batch.push(entry);
      }
      if (batch.length === 0) batch = ordered.slice(0, 1);
      const full = total >= this.policy.maxBatchSize || dynamic.preferredBatchSizes.includes(total);
      const waitedMs = Date.now() - ordered[0].enqueuedAt;
      const delayMs = dynamic.maxQueueDelayUs / 1000;
      if (!full && batch.length === ordered.length && waitedMs < delayMs) {
        this.armDelayTimer(delayMs - waitedMs);
        return undefined;
      }
    }
    for (const entry of batch) this.queues.remove(entry);
    return batch;
  }

  private armDelayTimer(ms: number): void {
    if (this.delayTimer) return;
    this.delayTimer = setTimeout(() => {
      this.delayTimer = undefined;
      this.pump();
    }, Math.max(0, Math.ceil(ms)));
  }

  private start(executor: BatchExecutor, entries: Entry[]): bigint {
    const startNs = process.hrtime.bigint();
    this.inFlight += 1;
    this.load.set(executor, (this.load.get(executor) ?? 0) + entries.reduce((n, e) => n + e.batchSize, 0));
    for (const entry of entries) {
      clearTimeout(entry.timeoutTimer);
      entry.state = 'running';
      entry.executor = executor;
      entry.queueNs = Number(startNs - entry.enqueuedNs);
    }
    return startNs;
  }

  private finish(executor: BatchExecutor, entries: Entry[], startNs: bigint): number {
    const computeNs = Number(process.hrtime.bigint() - startNs);
    this.inFlight -= 1;
    this.load.set(executor, (this.load.get(executor) ?? 0) - entries.reduce((n, e) => n + e.batchSize, 0));
    return computeNs;
  }

  private async runBatch(executor: BatchExecutor, batch: Entry[]): Promise<void> {
    const startNs = this.start(executor, batch);
    let results: Array<InferResponse | SdserveError>;
    try {
      const streamed = batch.some((entry) => entry.onAnswer !== undefined);
      results = await executor.execute(batch.map((entry) => entry.request),
        (index, step, steps, preview) => batch[index]?.onProgress?.(step, steps, preview),
        streamed ? (index, answer) => forward(batch[index], answer) : undefined);
    } catch (err) {
      const error = toSdserveError(err, 'SDS_ERR_BACKEND');
      results = batch.map(() => error);
    }
    const computeNs = this.finish(executor, batch, startNs);
    this.observeExecution(batch.reduce((n, entry) => n + entry.batchSize, 0), computeNs,
      results.filter((result): result is InferResponse => !(result instanceof SdserveError)));
    batch.forEach((entry, i) => this.settle(entry, results[i], computeNs));
    this.afterRun();
  }

  private async runOne(executor: BatchExecutor, entry: Entry): Promise<void> {
    const startNs = this.start(executor, [entry]);
    let result: InferResponse | SdserveError;
    try {
      [result] = await Promise.all(executor.executeEach([entry.request], (_, step, steps, preview) => entry.onProgress?.(step, steps, preview),
        entry.onAnswer && ((_, answer) => forward(entry, answer))));
    } catch (err) {
      result = toSdserveError(err, 'SDS_ERR_BACKEND');
    }
    const computeNs = this.finish(executor, [entry], startNs);
    this.observeExecution(entry.batchSize, computeNs, result instanceof SdserveError ? [] : [result]);
    this.settle(entry, result, computeNs);
    this.afterRun();
  }

  private afterRun(): void {
    this.pump();
    this.resolveIdleWaiters();
  }

  /** An aborted request fails with the abort's reason (a client gone, a drain out of time), not the backend's report of it. */
  private settle(entry: Entry, result: InferResponse | SdserveError | undefined, computeNs = 0): void {
    if (entry.state === 'done') return;
    entry.state = 'done';
    clearTimeout(entry.timeoutTimer);
    if (entry.onAbort) entry.signal?.removeEventListener('abort', entry.onAbort);
    const serverAbort: unknown = entry.signal?.reason;
    if (result instanceof SdserveError && serverAbort instanceof SdserveError) entry.reject(serverAbort);
    else if (result instanceof SdserveError) entry.reject(result);
    else if (result === undefined) entry.reject(new SdserveError('SDS_ERR_BACKEND', 'backend returned no response for this request'));
    else entry.resolve({ response: result, queueNs: entry.queueNs, computeNs });
  }

  private resolveIdleWaiters(): void {
    if (this.queues.size > 0 || this.inFlight > 0) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const resolve of waiters) resolve();
  }
}

/** An answer reaches its client only while the request runs: not after it failed (a deadline, a drain). */
function forward(entry: Entry | undefined, answer: StreamedAnswer): void {
  if (entry?.state === 'running') entry.onAnswer?.(answer);
}

function cancelled(): SdserveError {
  return new SdserveError('SDS_ERR_CANCELLED', 'request cancelled by the client');
}
