import { BackendProcess, type CapabilitiesMeta } from '../backend/index.js';
import { SdserveError } from '../errors.js';
import type { Logger } from '../logger.js';
import type { AnswerListener, BatchExecutor, StepListener } from '../scheduler/index.js';
import { ExecutionWatch, type ExecutionDeadline } from './execution-deadline.js';
import type { InferRequest, InferResponse } from './types.js';

export type BackendStartOptions = Parameters<typeof BackendProcess.start>[0];

const RESTART_BACKOFF_MS = [250, 1000, 3000, 10000];

/**
 * How a running backend is probed. Its reader thread answers health probes even while a model
 * call runs, so missing several in a row means the process is stuck (stopped, deadlocked in
 * native code, or its host starved): it is killed, failing its in-flight requests with a clear
 * error instead of holding them forever, and restarted.
 */
export interface HealthWatch {
  intervalMs: number;
  timeoutMs: number;
  /** Consecutive missed probes before the process is killed. */
  misses: number;
}

export const DEFAULT_HEALTH_WATCH: HealthWatch = { intervalMs: 10_000, timeoutMs: 10_000, misses: 3 };

/**
 * One backend process under supervision: a process that dies unexpectedly fails its in-flight
 * requests (BackendProcess does that) and is started again with backoff, while the scheduler
 * routes around it; one that stops answering health probes is killed and restarted likewise.
 */
export class ModelInstance implements BatchExecutor {
  private process: BackendProcess | undefined;
  private stopping = false;
  private restartTimer: NodeJS.Timeout | undefined;
  private consecutiveFailures = 0;
  // A process being killed for missing health probes takes no more requests.
  private condemned: BackendProcess | undefined;
  restarts = 0;
  private readonly executions: ExecutionWatch;

  constructor(
    readonly label: string,
    private readonly startOptions: BackendStartOptions,
    private readonly logger: Logger,
    private readonly onAvailable: () => void,
    private readonly healthWatch: HealthWatch = DEFAULT_HEALTH_WATCH,
    deadline: ExecutionDeadline = { deadlineMs: 0, graceMs: 0 },
  ) {
    this.executions = new ExecutionWatch(deadline, (ids) => this.cancel(ids), () => this.killStuck());
  }

  get isAvailable(): boolean {
    return this.process?.isAlive === true && this.process !== this.condemned;
  }

  /** What the backend declared when it loaded; undefined for models that declare nothing. */
  get capabilities(): CapabilitiesMeta | undefined {
    return this.process?.loaded?.capabilities;
  }

  /** The execution deadline of requests sent from now on (the model's, once its backend declared what it is). */
  setExecutionDeadline(deadline: ExecutionDeadline): void {
    this.executions.deadline = deadline;
  }

  /** Whether a request has run past its execution deadline and is still running. */
  get isStuck(): boolean {
    return this.executions.isStuck;
  }

  /** First start: a failure here is the model's load failure, reported to the caller. */
  async start(): Promise<void> {
    this.process = await BackendProcess.start(this.startOptions);
    this.watch(this.process);
  }

  execute(requests: InferRequest[], onProgress?: StepListener, onAnswer?: AnswerListener): Promise<Array<InferResponse | SdserveError>> {
    return this.executions.track(requestIds(requests), this.backendFor(requests).execute(requests, onProgress, onAnswer));
  }

  executeEach(requests: InferRequest[], onProgress?: StepListener, onAnswer?: AnswerListener): Array<Promise<InferResponse>> {
    return this.backendFor(requests).executeEach(requests, onProgress, onAnswer)
      .map((work, index) => this.executions.track(requestIds([requests[index]]), work));
  }

  /** The current process (a dead one rejects the requests itself). */
  private backendFor(requests: InferRequest[]): BackendProcess {
    const process = this.process as BackendProcess; // start() set it before the scheduler saw this instance
    this.logger.debug(`backend ${this.label} (pid ${process.pid}): executing ${requests.length} request(s)`);
    return process;
  }

  cancel(requestIds: string[]): void {
    this.process?.cancel(requestIds);
  }

  async stop(graceMs: number): Promise<void> {
    this.stopping = true;
    clearTimeout(this.restartTimer);
    await this.process?.stop(graceMs);
  }

  /** The current process id, for logs and tests. */
  get pid(): number | undefined {
    return this.process?.pid;
  }

  /** Cancellation cannot reach a request stuck inside one step: only killing the process can. */
  private killStuck(): void {
    const { deadline } = this.executions;
    const process = this.process;
    if (process === undefined || !process.isAlive || this.stopping) return;
    this.logger.error(`backend ${this.label} (pid ${process.pid}) still runs a request ${(deadline.deadlineMs + deadline.graceMs) / 1000} s `
      + 'after it started, past its execution deadline and grace; killing it');
    this.condemned = process;
    void process.kill();
  }

  private watch(process: BackendProcess): void {
    const probes = this.probeHealth(process);
    process.once('exit', (code: number | null, signal: string | null) => {
      clearInterval(probes);
      if (this.stopping || process !== this.process) return;
      this.logger.warn(`backend ${this.label} exited (${signal ?? `code ${code}`}); restarting`);
      this.scheduleRestart();
    });
  }

  private probeHealth(process: BackendProcess): NodeJS.Timeout {
    const { intervalMs, timeoutMs, misses } = this.healthWatch;
    let missed = 0;
    let probing = false;
    const timer = setInterval(() => {
      if (probing || this.stopping || !process.isAlive) return;
      probing = true;
      void process.health(timeoutMs).then((healthy) => {
        probing = false;
        missed = healthy ? 0 : missed + 1;
        if (missed >= misses && process.isAlive && !this.stopping) {
          if (this.condemned !== process) {
            this.logger.error(`backend ${this.label} (pid ${process.pid}) missed ${missed} health probes; killing it`);
            this.condemned = process;
          }
          void process.kill();
        }
      });
    }, intervalMs);
    timer.unref();
    return timer;
  }

  private scheduleRestart(): void {
    const delay = RESTART_BACKOFF_MS[Math.min(this.consecutiveFailures, RESTART_BACKOFF_MS.length - 1)];
    this.restartTimer = setTimeout(() => void this.restart(), delay);
  }

  private async restart(): Promise<void> {
    if (this.stopping) return;
    try {
      const process = await BackendProcess.start(this.startOptions);
      if (this.stopping) {
        await process.stop(1000);
        return;
      }
      this.process = process;
      this.watch(process);
      this.restarts += 1;
      this.consecutiveFailures = 0;
      this.logger.info(`backend ${this.label} restarted (pid ${process.pid})`);
      this.onAvailable();
    } catch (err) {
      this.consecutiveFailures += 1;
      this.logger.error(`backend ${this.label} failed to restart: ${(err as Error).message}`);
      this.scheduleRestart();
    }
  }
}

function requestIds(requests: InferRequest[]): string[] {
  return requests.map((request) => request.id ?? '').filter((id) => id !== '');
}
