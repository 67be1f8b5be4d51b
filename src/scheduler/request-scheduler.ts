import { SdserveError } from '../errors.js';
import type { InferRequest, InferResponse } from '../core/types.js';

/** Anything that runs a batch of requests: a backend instance. */
export interface BatchExecutor {
  readonly label: string;
  readonly isAvailable: boolean;
  execute(requests: InferRequest[]): Promise<Array<InferResponse | SdserveError>>;
}

export interface SchedulerPolicy {
  /** 0: the model does not batch; each execute gets one request. */
  maxBatchSize: number;
  /** Absent: no dynamic batching, one request per execute (Triton's default scheduler). */
  dynamicBatching?: {
    maxQueueDelayUs: number;
    preferredBatchSizes: number[];
  };
  /** 0: unbounded. */
  maxQueueSize: number;
}

/** A response with the time its request spent queued and in the backend. */
export interface ScheduledResponse {
  response: InferResponse;
  queueNs: number;
  computeNs: number;
}

/** Told of every execution, for statistics. */
export type ExecutionObserver = (batchSize: number, computeNs: number) => void;

interface QueuedRequest {
  request: InferRequest;
  batchSize: number;
  enqueuedAt: number;
  enqueuedNs: bigint;
  queueNs: number;
  signal?: AbortSignal;
  onAbort?: () => void;
  resolve(result: ScheduledResponse): void;
  reject(error: SdserveError): void;
}

/**
 * Queues requests of one model version and hands batches to whichever instance is free.
 * Dynamic batching follows Triton: gather queued requests up to max_batch_size (or a preferred
 * size), waiting at most max_queue_delay_microseconds for the batch to fill.
 */
export class RequestScheduler {
  private readonly queue: QueuedRequest[] = [];
  private readonly busy = new Set<BatchExecutor>();
  private readonly executors: BatchExecutor[] = [];
  private delayTimer: NodeJS.Timeout | undefined;
  private inFlight = 0;
  private idleWaiters: Array<() => void> = [];

  constructor(
    private readonly modelLabel: string,
    private readonly policy: SchedulerPolicy,
    private readonly observeExecution: ExecutionObserver = () => {},
  ) {}

  addExecutor(executor: BatchExecutor): void {
    this.executors.push(executor);
    this.pump();
  }

  /** Call when an executor may have become available again (e.g. after a restart). */
  notifyAvailable(): void {
    this.pump();
  }

  get queueLength(): number {
    return this.queue.length;
  }

  enqueue(request: InferRequest, batchSize: number, signal?: AbortSignal): Promise<ScheduledResponse> {
    if (this.policy.maxQueueSize > 0 && this.queue.length >= this.policy.maxQueueSize) {
      return Promise.reject(new SdserveError('SDS_ERR_QUEUE_FULL',
        `Exceeds maximum queue size of ${this.policy.maxQueueSize} for model '${this.modelLabel}'`));
    }
    if (signal?.aborted) return Promise.reject(cancelled());
    return new Promise<ScheduledResponse>((resolve, reject) => {
      const entry: QueuedRequest = {
        request, batchSize, enqueuedAt: Date.now(), enqueuedNs: process.hrtime.bigint(), queueNs: 0, signal, resolve, reject,
      };
      if (signal) {
        entry.onAbort = () => this.dropQueued(entry);
        signal.addEventListener('abort', entry.onAbort, { once: true });
      }
      this.queue.push(entry);
      this.pump();
    });
  }

  /** Rejects everything still queued; in-flight batches finish. */
  rejectQueued(error: SdserveError): void {
    for (const entry of this.queue.splice(0)) this.settle(entry, error);
    this.resolveIdleWaiters();
  }

  /** Resolves once nothing is queued or running. */
  whenIdle(): Promise<void> {
    if (this.queue.length === 0 && this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private dropQueued(entry: QueuedRequest): void {
    const index = this.queue.indexOf(entry);
    if (index < 0) return;
    this.queue.splice(index, 1);
    this.settle(entry, cancelled());
    this.resolveIdleWaiters();
  }

  private pump(): void {
    while (this.queue.length > 0) {
      const executor = this.executors.find((e) => e.isAvailable && !this.busy.has(e));
      if (!executor) return;
      const batch = this.takeBatch();
      if (!batch) return;
      void this.run(executor, batch);
    }
  }

  /** 1. fill up to the limit  2. wait for more if allowed  3. hand out the batch. */
  private takeBatch(): QueuedRequest[] | undefined {
    const dynamic = this.policy.dynamicBatching;
    if (!dynamic || this.policy.maxBatchSize === 0) return this.queue.splice(0, 1);

    let count = 0;
    let total = 0;
    while (count < this.queue.length && total + this.queue[count].batchSize <= this.policy.maxBatchSize) {
      total += this.queue[count].batchSize;
      count += 1;
    }
    count = Math.max(count, 1);
    const full = total >= this.policy.maxBatchSize || dynamic.preferredBatchSizes.includes(total);
    const waitedMs = Date.now() - this.queue[0].enqueuedAt;
    const delayMs = dynamic.maxQueueDelayUs / 1000;
    const moreCouldFit = count === this.queue.length;
    if (!full && moreCouldFit && waitedMs < delayMs) {
      this.armDelayTimer(delayMs - waitedMs);
      return undefined;
    }
    return this.queue.splice(0, count);
  }

  private armDelayTimer(ms: number): void {
    if (this.delayTimer) return;
    this.delayTimer = setTimeout(() => {
      this.delayTimer = undefined;
      this.pump();
    }, Math.max(0, Math.ceil(ms)));
  }

  private async run(executor: BatchExecutor, batch: QueuedRequest[]): Promise<void> {
    this.busy.add(executor);
    this.inFlight += 1;
    const startNs = process.hrtime.bigint();
    for (const entry of batch) {
      if (entry.onAbort) entry.signal?.removeEventListener('abort', entry.onAbort);
      entry.queueNs = Number(startNs - entry.enqueuedNs);
    }
    try {
      const results = await executor.execute(batch.map((entry) => entry.request));
      const computeNs = Number(process.hrtime.bigint() - startNs);
      this.observeExecution(batch.reduce((n, entry) => n + entry.batchSize, 0), computeNs);
      batch.forEach((entry, i) => this.settle(entry, results[i], computeNs));
    } catch (err) {
      const error = err instanceof SdserveError ? err : new SdserveError('SDS_ERR_BACKEND', String(err));
      for (const entry of batch) this.settle(entry, error);
    } finally {
      this.busy.delete(executor);
      this.inFlight -= 1;
      this.pump();
      this.resolveIdleWaiters();
    }
  }

  private settle(entry: QueuedRequest, result: InferResponse | SdserveError | undefined, computeNs = 0): void {
    if (result instanceof SdserveError) entry.reject(result);
    else if (result === undefined) entry.reject(new SdserveError('SDS_ERR_BACKEND', 'backend returned no response for this request'));
    else entry.resolve({ response: result, queueNs: entry.queueNs, computeNs });
  }

  private resolveIdleWaiters(): void {
    if (this.queue.length > 0 || this.inFlight > 0) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const resolve of waiters) resolve();
  }
}

function cancelled(): SdserveError {
  return new SdserveError('SDS_ERR_CANCELLED', 'request cancelled by the client');
}
