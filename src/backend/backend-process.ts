/**
 * One Python backend process hosting one model instance: spawn, two-phase handshake (hello,
 * then load), request/response over the Unix socket, health probe, and graceful stop.
 * Restart policy is the supervisor's; a dead backend is replaced by calling `start` again.
 */

import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';

import { setStageTimings } from '../core/stage-timings.js';
import type { ImagePreview, InferRequest, InferResponse, StreamedAnswer } from '../core/types.js';
import { loadFailureCode, SdserveError, toSdserveError, type ErrorCode } from '../errors.js';
import { encodeFrame, FrameDecoder, type Frame, type MalformedFrameError } from './frame.js';
import { helloProblem, loadResponseProblem, progressProblem, responseNotifyProblem } from './message-checks.js';
import {
  isErrorMeta, MessageType, messageTypeName,
  type CancelRequestMeta, type ExecuteRequestMeta, type ExecuteResponseMeta, type HelloMeta,
  type LoadErrorMeta, type LoadRequestMeta, type LoadResponseMeta, type ProgressMeta, type ResponseMeta, type ResponseNotifyMeta, type TritonErrorCode,
} from './messages.js';
import { PayloadBuilder, tensorFromPayload } from './tensor-payload.js';

export interface BackendLogger {
  info(msg: string): void;
  warn(msg: string): void;
  error(msg: string): void;
}

export interface BackendProcessOptions {
  pythonExecutable: string;
  /** Prepended to PYTHONPATH; must hold `sdserve_backend` and `triton_python_backend_utils`. */
  pythonPath: string[];
  modelFile: string;
  /** Triton's `initialize(args)` dict. */
  args: Record<string, string>;
  /** Names this backend in logs and errors, e.g. `tiny_sd_0`. */
  label: string;
  /** Spawn until HelloNotify. */
  startTimeoutMs: number;
  /** LoadRequest until LoadResponse; a big model can take minutes. */
  loadTimeoutMs: number;
  /** Added to this process's environment. */
  env?: NodeJS.ProcessEnv;
  logger?: BackendLogger;
  /** Backends started ahead (`--backend-prestart`): `start` takes one spawned alike, if any. */
  spares?: BackendSpareSource;
}

/** What `start` needs to spawn a backend, before any model is named. */
export type BackendSpawnOptions = Pick<BackendProcessOptions, 'pythonExecutable' | 'pythonPath' | 'env'> & {
  label: string;
  logger?: BackendLogger;
  /** Modules the backend imports right after its hello (`--preimport`), before a load request. */
  preimport?: string[];
};

/** Hands out backends spawned ahead with the same options, and starts their replacements. */
export interface BackendSpareSource {
  /** A live spare spawned as `opts` would spawn it, no longer a spare; undefined if none. */
  take(opts: BackendSpawnOptions): BackendProcess | undefined;
  /** Spawn a spare like `opts` unless one is there. */
  prestart(opts: BackendSpawnOptions): void;
}

export type ProgressListener = (requestIndex: number, step: number, steps: number, preview?: ImagePreview) => void;

/** Hears every answer a decoupled model sends for request `requestIndex` of an ExecuteRequest. */
export type AnswerListener = (requestIndex: number, answer: StreamedAnswer) => void;

export interface BackendProcessEvents {
  exit: [code: number | null, signal: NodeJS.Signals | null];
}

interface PendingReply {
  expected: MessageType;
  resolve(frame: Frame): void;
  reject(error: SdserveError): void;
  onProgress?: ProgressListener;
  /** A decoupled model's ResponseNotify for this ExecuteRequest. */
  onResponse?(frame: Frame): void;
}

interface Deferred<T> {
  promise: Promise<T>;
  resolve(value: T): void;
  reject(error: unknown): void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => { resolve = res; reject = rej; });
  return { promise, resolve, reject };
}

/** Per-request Triton error codes that clients must see as their own mistakes, not ours. */
const TRITON_CODE_TO_ERROR: Partial<Record<TritonErrorCode, ErrorCode>> = {
  INVALID_ARG: 'SDS_ERR_INVALID_ARG',
  UNSUPPORTED: 'SDS_ERR_UNSUPPORTED',
  CANCELLED: 'SDS_ERR_CANCELLED',
};

/**
 * A LoadResponse's error: the caller's config (SDS_ERR_CONFIG) when the backend says the config is
 * at fault, as Triton answers a model whose config is invalid; anything else is the server's.
 */
function loadError(meta: LoadErrorMeta): SdserveError {
  return new SdserveError(meta.code === 'INVALID_ARG' ? 'SDS_ERR_CONFIG' : 'SDS_ERR_BACKEND', meta.error);
}

/**
 * Errors that failed a whole ExecuteRequest rather than one request of it (the backend died,
 * answered with ErrorNotify or a malformed frame): `execute` throws these instead of returning them.
 */
const WHOLE_CALL_FAILURES = new WeakSet<object>();

const LOG_LEVEL = /^(DEBUG|INFO|WARNING|ERROR|CRITICAL) /;
const STDERR_TAIL_LINES = 20;

const stderrLogger: BackendLogger = {
  info: (msg) => process.stderr.write(`${msg}\n`),
  warn: (msg) => process.stderr.write(`${msg}\n`),
  error: (msg) => process.stderr.write(`${msg}\n`),
};

export class BackendProcess extends EventEmitter<BackendProcessEvents> {
  /** Names this backend in logs (a spare takes its model instance's name once taken). */
  label: string;
  /** What the backend said in HelloNotify (set once `start` resolves). */
  hello: HelloMeta | undefined;
  /** What the backend said in its successful LoadResponse: its capabilities, if it declares any. */
  loaded: LoadResponseMeta | undefined;

  private readonly child: ChildProcess;
  private readonly logger: BackendLogger;
  private readonly pending = new Map<number, PendingReply>();
  private readonly helloReceived = deferred<HelloMeta>();
  private readonly exited = deferred<void>();
  private readonly stderrTail: string[] = [];
  private socket: Socket | undefined;
  private nextCorrelationId = 1;
  private alive = true;
  private stopping = false;

  private constructor(child: ChildProcess, private readonly server: Server,
    private readonly socketDir: string, label: string, logger: BackendLogger) {
    super();
    this.child = child;
    this.label = label;
    this.logger = logger;
    // Callers that never wait for hello (failed starts) must not see an unhandled rejection.
    this.helloReceived.promise.catch(() => undefined);
    server.on('connection', (socket) => this.onConnection(socket));
    child.on('exit', (code, signal) => this.onExit(code, signal));
    child.on('error', (err) => {
      this.logger.error(`[${label}] cannot run the backend: ${err.message}`);
      if (child.pid === undefined) this.onExit(null, null, err.message);
    });
    if (child.stdout) this.forwardLines(child.stdout, 'info', false);
    if (child.stderr) this.forwardLines(child.stderr, 'warn', true);
  }

  /**
   * Spawns the backend and loads its model. Throws SdserveError('SDS_ERR_BACKEND', reason) if
   * it does not say hello within `startTimeoutMs` or does not load within `loadTimeoutMs`;
   * the reason is the backend's own message when it gave one, and the code SDS_ERR_CONFIG when
   * the backend refused the model's config. The child is dead by then.
   */
  static async start(opts: BackendProcessOptions): Promise<BackendProcess> {
    // 1-2. a spare spawned ahead with the same options, or a new process
    const spare = opts.spares?.take(opts);
    if (spare !== undefined) {
      spare.logger.info(`[${spare.label}] becomes ${opts.label} (pid ${spare.pid})`);
      spare.label = opts.label;
    }
    const backend = spare ?? await BackendProcess.spawn(opts);
    try {
      // 3. hello
      backend.hello = await withTimeout(backend.helloReceived.promise, opts.startTimeoutMs,
        () => `backend ${opts.label} did not connect within ${opts.startTimeoutMs} ms`);
      // 4. load
      const load: LoadRequestMeta = { model_file: opts.modelFile, args: opts.args };
      const reply = await backend.request(MessageType.LoadRequest, MessageType.LoadResponse, load, [],
        { timeoutMs: opts.loadTimeoutMs, timeoutMessage: `backend ${opts.label} did not load ${opts.modelFile} within ${opts.loadTimeoutMs} ms` });
      if (isErrorMeta(reply.metadata)) throw loadError(reply.metadata);
      const problem = loadResponseProblem(reply.metadata);
      if (problem !== undefined) throw new SdserveError('SDS_ERR_BACKEND', `backend ${opts.label}: ${problem}`);
      backend.loaded = reply.metadata as unknown as LoadResponseMeta;
      backend.logger.info(`[${opts.label}] loaded ${opts.modelFile} (pid ${backend.pid})`);
      // The next start of this kind finds a spare again (started now, not during this load).
      opts.spares?.prestart(opts);
      return backend;
    } catch (err) {
      await backend.kill();
      const message = err instanceof Error ? err.message : String(err);
      throw new SdserveError(loadFailureCode(err), message, { cause: err });
    }
  }

  /**
   * Spawns a backend that connects and says hello, and no more (no model yet). Throws
   * SdserveError('SDS_ERR_BACKEND') if its socket cannot be made.
   */
  static async spawn(opts: BackendSpawnOptions): Promise<BackendProcess> {
    // 1. listen on a socket only this user can reach (mkdtemp makes the folder 0700)
    const socketDir = await mkdtemp(join(tmpdir(), 'sdserve-backend-'));
    const socketPath = join(socketDir, 'backend.sock');
    const server = createServer();
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(socketPath, () => { server.off('error', reject); resolve(); });
      });
    } catch (err) {
      await rm(socketDir, { recursive: true, force: true });
      throw new SdserveError('SDS_ERR_BACKEND', `cannot listen on ${socketPath}: ${(err as Error).message}`);
    }
    // 2. spawn
    const inherited = opts.env?.PYTHONPATH ?? process.env.PYTHONPATH;
    const preimport = (opts.preimport ?? []).flatMap((module) => ['--preimport', module]);
    const child = spawn(opts.pythonExecutable, ['-m', 'sdserve_backend', '--socket', socketPath, ...preimport], {
      env: {
        ...process.env,
        ...opts.env,
        PYTHONPATH: [...opts.pythonPath, ...(inherited ? [inherited] : [])].join(delimiter),
        PYTHONUNBUFFERED: '1',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    return new BackendProcess(child, server, socketDir, opts.label, opts.logger ?? stderrLogger);
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get isAlive(): boolean {
    return this.alive;
  }

  /**
   * Runs `requests` as one batch. Resolves to one entry per request, in order: its response,
   * or the SdserveError the model gave it (a failure of the whole batch is given to each).
   * Rejects with SDS_ERR_BACKEND_DIED if the backend dies first, and with the error when the
   * backend fails the call as a whole (ErrorNotify, a malformed reply).
   */
  async execute(requests: InferRequest[], onProgress?: ProgressListener, onAnswer?: AnswerListener): Promise<Array<InferResponse | SdserveError>> {
    const results = await Promise.allSettled(this.executeEach(requests, onProgress, onAnswer));
    const wholeCall = results.find((result) => result.status === 'rejected' && WHOLE_CALL_FAILURES.has(result.reason as object));
    if (wholeCall !== undefined) throw (wholeCall as PromiseRejectedResult).reason;
    return results.map((result) => (result.status === 'fulfilled' ? result.value : toSdserveError(result.reason, 'SDS_ERR_BACKEND')));
  }

  /**
   * Runs `requests` as one ExecuteRequest and returns one promise per request, in order, each
   * settled as soon as that request's final response arrives: all at once for a model that
   * answers with ExecuteResponse, one by one for a decoupled model (ResponseNotify). A promise
   * rejects with the SdserveError the model gave its request (a failure of the whole batch is
   * given to each request still open), and all open ones with SDS_ERR_BACKEND_DIED if the
   * backend dies. A decoupled request's non-final responses are kept: a final flag sent alone
   * settles the request with the last response it was sent. With `onAnswer`, every answer of a
   * decoupled model goes to it as it arrives instead, and the final one settles the request with
   * a response of no outputs: the answers were the result.
   */
  executeEach(requests: InferRequest[], onProgress?: ProgressListener, onAnswer?: AnswerListener): Array<Promise<InferResponse>> {
    if (requests.length === 0) return [];
    const each = requests.map(() => deferred<InferResponse>());
    const promises = each.map((entry) => entry.promise);
    const unavailable = this.unavailableReason(MessageType.ExecuteRequest);
    if (unavailable !== undefined) {
      WHOLE_CALL_FAILURES.add(unavailable);
      for (const entry of each) entry.reject(unavailable);
      return promises;
    }
    // 1. encode the batch (timed with its write: the requests' compute_input)
    const encodeStarted = process.hrtime.bigint();
    let inputNs = 0;
    // A streamed request's responses are decoded as they come: their decoding adds up.
    const streamedOutputNs = new Map<number, number>();
    const decode = (index: number, response: ResponseMeta, payload: Buffer): InferResponse | SdserveError => {
      const started = process.hrtime.bigint();
      const outcome = toInferResponse(requests[index], response, payload);
      if (!(outcome instanceof SdserveError)) {
        setStageTimings(outcome, { inputNs, outputNs: Number(process.hrtime.bigint() - started) });
      }
      return outcome;
    };
    const payload = new PayloadBuilder();
    const metadata: ExecuteRequestMeta = {
      requests: requests.map((request) => ({
        request_id: request.id ?? '',
        inputs: request.inputs.map((tensor) => payload.add(tensor)),
        requested_output_names: request.outputs?.map((output) => output.name) ?? [],
        parameters: request.parameters,
      })),
    };
    // 2. settle each request once, and forget the call when none is left open
    const correlationId = this.nextCorrelationId++;
    const open = new Set(requests.keys());
    const latest = new Map<number, { response: ResponseMeta; payload: Buffer }>();
    const settle = (index: number, outcome: InferResponse | SdserveError): void => {
      if (!open.delete(index)) return;
      if (outcome instanceof SdserveError) each[index].reject(outcome);
      else each[index].resolve(outcome);
      if (open.size === 0) this.pending.delete(correlationId);
    };
    const failOpen = (error: SdserveError): void => {
      for (const index of [...open]) settle(index, error);
    };
    // 3. a normal model answers every request in one ExecuteResponse
    const onExecuteResponse = (frame: Frame): void => {
      const answer = frame.metadata as ExecuteResponseMeta;
      if (isErrorMeta(answer)) {
        for (const index of [...open]) settle(index, new SdserveError('SDS_ERR_BACKEND', answer.error));
      } else if (!Array.isArray(answer.responses) || answer.responses.length !== requests.length) {
        const error = new SdserveError('SDS_ERR_BACKEND',
          `backend ${this.label} answered ${requests.length} requests with ${answer.responses?.length} responses`);
        WHOLE_CALL_FAILURES.add(error);
        failOpen(error);
      } else {
        answer.responses.forEach((response, index) => settle(index, decode(index, response, frame.payload)));
      }
    };
    // 4. a decoupled model answers each request on its own, final flag last
    const onResponse = (frame: Frame): void => {
      const { request_index: index, response, final } = frame.metadata as unknown as ResponseNotifyMeta;
      if (!open.has(index)) {
        this.logger.warn(`[${this.label}] ignored a response for request ${String(index)} of ${correlationId}: it is not open`);
        return;
      }
      if (onAnswer !== undefined) {
        const started = process.hrtime.bigint();
        const answer = response === undefined ? undefined : toInferResponse(requests[index], response, frame.payload);
        streamedOutputNs.set(index, (streamedOutputNs.get(index) ?? 0) + Number(process.hrtime.bigint() - started));
        const isFinal = final === true;
        try {
          onAnswer(index, answer instanceof SdserveError ? { error: answer, final: isFinal }
            : answer !== undefined ? { response: answer, final: isFinal } : { final: isFinal });
        } catch (err) {
          this.logger.warn(`[${this.label}] response listener failed: ${(err as Error).message}`);
        }
        if (isFinal) {
          const answered = answeredAlready(requests[index]);
          setStageTimings(answered, { inputNs, outputNs: streamedOutputNs.get(index) ?? 0 });
          settle(index, answered);
        }
        return;
      }
      if (response !== undefined) latest.set(index, { response, payload: frame.payload });
      if (final !== true) return;
      const last = latest.get(index);
      settle(index, last !== undefined
        ? decode(index, last.response, last.payload)
        : new SdserveError('SDS_ERR_BACKEND', `backend ${this.label} ended request ${index} without sending a response`));
    };
    this.pending.set(correlationId, {
      expected: MessageType.ExecuteResponse,
      resolve: onExecuteResponse,
      reject: (error) => {
        WHOLE_CALL_FAILURES.add(error);
        failOpen(error);
      },
      onProgress,
      onResponse,
    });
    this.write(encodeFrame(MessageType.ExecuteRequest, correlationId, metadata, payload.parts));
    inputNs = Number(process.hrtime.bigint() - encodeStarted);
    return promises;
  }

  /**
   * Marks requests as cancelled; a model sees it through `request.is_cancelled()` and may stop
   * early. Requests without an id cannot be cancelled. No reply: the execute still answers.
   */
  cancel(requestIds: string[]): void {
    if (!this.alive || this.socket === undefined || requestIds.length === 0) return;
    const metadata: CancelRequestMeta = { request_ids: requestIds };
    this.write(encodeFrame(MessageType.CancelRequest, this.nextCorrelationId++, metadata));
  }

  /** Whether the backend answers a probe within `timeoutMs` (it does so even mid-execute). */
  async health(timeoutMs: number): Promise<boolean> {
    try {
      await this.request(MessageType.HealthRequest, MessageType.HealthResponse, {}, [], { timeoutMs });
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Asks the backend to finalize and exit: executes already sent finish first, then the
   * model's `finalize()` runs. SIGKILL if it has not exited after `graceMs`.
   */
  async stop(graceMs: number): Promise<void> {
    if (!this.alive || this.stopping) return this.exited.promise;
    this.stopping = true;
    const killTimer = setTimeout(() => { void this.kill(); }, graceMs);
    try {
      const reply = await this.request(MessageType.FinalizeRequest, MessageType.FinalizeResponse, {}, []);
      if (isErrorMeta(reply.metadata)) this.logger.warn(`[${this.label}] finalize failed: ${reply.metadata.error}`);
    } catch {
      // It exited or was killed before replying; either way it is gone.
    }
    await this.exited.promise;
    clearTimeout(killTimer);
  }

  /** SIGKILL, resolving once the child is gone. */
  async kill(): Promise<void> {
    if (this.alive) this.child.kill('SIGKILL');
    return this.exited.promise;
  }

  private request(type: MessageType, expected: MessageType, metadata: object, payload: Buffer[],
    opts: { timeoutMs?: number; timeoutMessage?: string; onProgress?: ProgressListener } = {}): Promise<Frame> {
    const unavailable = this.unavailableReason(type);
    if (unavailable !== undefined) return Promise.reject(unavailable);
    const correlationId = this.nextCorrelationId++;
    const frames = encodeFrame(type, correlationId, metadata, payload);
    const reply = new Promise<Frame>((resolve, reject) => {
      this.pending.set(correlationId, { expected, resolve, reject, onProgress: opts.onProgress });
    });
    this.write(frames);
    if (opts.timeoutMs === undefined) return reply;
    const message = opts.timeoutMessage
      ?? `backend ${this.label} did not answer ${messageTypeName(type)} within ${opts.timeoutMs} ms`;
    return withTimeout(reply, opts.timeoutMs, () => {
      this.pending.delete(correlationId);
      return message;
    });
  }

  private unavailableReason(type: MessageType): SdserveError | undefined {
    if (!this.alive || this.socket === undefined) {
      return new SdserveError('SDS_ERR_BACKEND_DIED', `backend ${this.label} is not running`);
    }
    if (this.stopping && type !== MessageType.FinalizeRequest) {
      return new SdserveError('SDS_ERR_BACKEND_DIED', `backend ${this.label} is stopping`);
    }
    return undefined;
  }

  private write(buffers: Buffer[]): void {
    const socket = this.socket;
    if (socket === undefined) return;
    socket.cork();
    for (const buffer of buffers) socket.write(buffer);
    socket.uncork();
  }

  private onConnection(socket: Socket): void {
    if (this.socket !== undefined) {
      socket.destroy();
      return;
    }
    this.socket = socket;
    // One backend, one connection: stop listening so nothing else can connect, and remove the
    // socket's folder now that nothing needs it.
    this.server.close();
    void this.removeSocketDir();
    const decoder = new FrameDecoder({
      onFrame: (frame) => this.onFrame(frame),
      onError: (error) => this.onMalformedFrame(error),
    });
    socket.on('data', (chunk: Buffer) => decoder.push(chunk));
    socket.on('error', (err) => this.logger.warn(`[${this.label}] socket error: ${err.message}`));
    socket.on('close', () => {
      // The connection is the backend's lifeline; a backend that dropped it cannot serve. One
      // that was asked to stop closes it on its way out: the grace timer covers a slow exit.
      if (this.alive && !this.stopping) {
        this.logger.error(`[${this.label}] backend closed its connection; killing it`);
        this.child.kill('SIGKILL');
      }
    });
  }

  private onFrame(frame: Frame): void {
    switch (frame.type) {
      case MessageType.HelloNotify: {
        const problem = helloProblem(frame.metadata);
        if (problem === undefined) this.helloReceived.resolve(frame.metadata as unknown as HelloMeta);
        else this.helloReceived.reject(new SdserveError('SDS_ERR_BACKEND', `backend ${this.label}: ${problem}`));
        return;
      }
      case MessageType.ProgressNotify:
        this.onProgress(frame);
        return;
      case MessageType.ErrorNotify:
        this.onErrorNotify(frame);
        return;
      case MessageType.ResponseNotify:
        this.onResponseNotify(frame);
        return;
      case MessageType.LoadResponse:
      case MessageType.ExecuteResponse:
      case MessageType.HealthResponse:
      case MessageType.FinalizeResponse:
        this.settle(frame);
        return;
      default:
        this.logger.warn(`[${this.label}] ignored ${messageTypeName(frame.type)}: backends do not send it`);
    }
  }

  private settle(frame: Frame): void {
    const pending = this.pending.get(frame.correlationId);
    if (pending === undefined || pending.expected !== frame.type) {
      this.logger.warn(`[${this.label}] ignored ${messageTypeName(frame.type)} ${frame.correlationId}: nothing awaits it`);
      return;
    }
    this.pending.delete(frame.correlationId);
    pending.resolve(frame);
  }

  private onProgress(frame: Frame): void {
    const listener = this.pending.get(frame.correlationId)?.onProgress;
    if (listener === undefined) return;
    const problem = progressProblem(frame.metadata);
    if (problem !== undefined) {
      this.logger.warn(`[${this.label}] ignored a progress report: ${problem}`);
      return;
    }
    const { request_index: index, step, steps, preview_shape: shape } = frame.metadata as unknown as ProgressMeta;
    try {
      listener(index, step, steps, shape ? { shape, data: frame.payload } : undefined);
    } catch (err) {
      this.logger.warn(`[${this.label}] progress listener failed: ${(err as Error).message}`);
    }
  }

  private onResponseNotify(frame: Frame): void {
    const pending = this.pending.get(frame.correlationId);
    if (pending?.onResponse === undefined) {
      this.logger.warn(`[${this.label}] ignored ResponseNotify ${frame.correlationId}: nothing awaits it`);
      return;
    }
    const problem = responseNotifyProblem(frame.metadata);
    if (problem !== undefined) {
      this.logger.error(`[${this.label}] ${problem}`);
      this.pending.delete(frame.correlationId);
      pending.reject(new SdserveError('SDS_ERR_BACKEND', `backend ${this.label} sent a malformed response: ${problem}`));
      return;
    }
    pending.onResponse(frame);
  }

  private onErrorNotify(frame: Frame): void {
    const message = String(frame.metadata.error);
    const pending = this.pending.get(frame.correlationId);
    if (frame.correlationId !== 0 && pending !== undefined) {
      this.pending.delete(frame.correlationId);
      pending.reject(new SdserveError('SDS_ERR_BACKEND', message));
      return;
    }
    this.logger.error(`[${this.label}] backend reported: ${message}`);
  }

  private onMalformedFrame(error: MalformedFrameError): void {
    this.logger.error(`[${this.label}] ${error.message}`);
    const pending = this.pending.get(error.correlationId);
    if (error.correlationId !== 0 && pending !== undefined) {
      this.pending.delete(error.correlationId);
      pending.reject(error);
    }
  }

  private onExit(code: number | null, signal: NodeJS.Signals | null, spawnError?: string): void {
    if (!this.alive) return;
    this.alive = false;
    const how = spawnError ?? signal ?? `code ${code}`;
    const lastLine = this.stderrTail.at(-1);
    this.helloReceived.reject(new SdserveError('SDS_ERR_BACKEND',
      `backend ${this.label} exited (${how}) before it was ready${lastLine ? `: ${lastLine}` : ''}`));
    for (const pending of this.pending.values()) {
      pending.reject(new SdserveError('SDS_ERR_BACKEND_DIED',
        `backend ${this.label} exited (${how}) while running this request`));
    }
    this.pending.clear();
    this.socket?.destroy();
    this.server.close();
    // Resolved only once the socket's folder is gone, so that a server exiting right after
    // stopping its backends leaves nothing behind in the temporary folder.
    void this.removeSocketDir().then(() => this.exited.resolve());
    this.emit('exit', code, signal);
  }

  private socketDirRemoved: Promise<void> | undefined;

  private removeSocketDir(): Promise<void> {
    this.socketDirRemoved ??= rm(this.socketDir, { recursive: true, force: true }).catch(() => undefined);
    return this.socketDirRemoved;
  }

  private forwardLines(stream: Readable, defaultLevel: keyof BackendLogger, keepTail: boolean): void {
    // Python's multi-line records (tracebacks) continue at the level of the line that began them.
    let level = defaultLevel;
    createInterface({ input: stream, crlfDelay: Infinity }).on('line', (line) => {
      const prefix = LOG_LEVEL.exec(line)?.[1];
      if (prefix !== undefined) {
        level = prefix === 'ERROR' || prefix === 'CRITICAL' ? 'error' : prefix === 'WARNING' ? 'warn' : 'info';
      }
      this.logger[level](`[${this.label}] ${line}`);
      if (keepTail && line.trim() !== '') {
        this.stderrTail.push(line.trim());
        if (this.stderrTail.length > STDERR_TAIL_LINES) this.stderrTail.shift();
      }
    });
  }
}

function toInferResponse(request: InferRequest, response: ResponseMeta, payload: Buffer): InferResponse | SdserveError {
  if ('error' in response) {
    const code = (response.code && TRITON_CODE_TO_ERROR[response.code]) ?? 'SDS_ERR_BACKEND';
    return new SdserveError(code, String(response.error));
  }
  try {
    return {
      ...(request.id !== undefined ? { id: request.id } : {}),
      model_name: request.model_name,
      model_version: request.model_version ?? '',
      outputs: response.outputs.map((meta) => tensorFromPayload(payload, meta)),
      ...(response.parameters !== undefined && Object.keys(response.parameters).length > 0 && { parameters: response.parameters }),
    };
  } catch (err) {
    return toSdserveError(err, 'SDS_ERR_BACKEND');
  }
}

/** The settled result of a request whose answers all went to its listener. */
function answeredAlready(request: InferRequest): InferResponse {
  return {
    ...(request.id !== undefined ? { id: request.id } : {}),
    model_name: request.model_name,
    model_version: request.model_version ?? '',
    outputs: [],
  };
}

async function withTimeout<T>(promise: Promise<T>, timeoutMs: number, onTimeout: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new SdserveError('SDS_ERR_TIMEOUT', onTimeout())), timeoutMs);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
