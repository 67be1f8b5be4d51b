import type { CapabilitiesMeta } from '../backend/messages.js';
import { quoted, SdserveError } from '../errors.js';
import { makesImages } from './image-model.js';
import type { ModelConfig } from '../repository/model-config-types.js';

/**
 * How long a request may run inside its backend (config parameters `max_execution_secs`, 0: no
 * limit, and `execution_grace_secs`). Past the deadline the request is cancelled; a model checks
 * that between steps. One stuck inside a step (a huge image on a CPU, native code that never
 * returns) is not reached by cancellation, so past the grace its backend process is killed and
 * restarted, failing the requests it held: the only way to interrupt a step.
 */
export interface ExecutionDeadline {
  deadlineMs: number;
  graceMs: number;
}

/** The default of a model that declares it makes images: generous for a real model on a CPU, finite for a stuck one. */
const IMAGE_DEADLINE_SECS = 600;
const DEFAULT_GRACE_SECS = 10;

const SECONDS = /^\d+(\.\d+)?$/;

/**
 * The deadline of `config`, over the default of what its backend declared (`capabilities`; a
 * model that declares nothing has no deadline unless its config sets one). Throws SDS_ERR_CONFIG
 * naming a parameter that is not a number of seconds.
 */
export function executionDeadline(config: ModelConfig, capabilities?: CapabilitiesMeta): ExecutionDeadline {
  const seconds = (name: string, fallback: number): number => {
    const text = config.parameters[name]?.string_value.trim() ?? '';
    if (text === '') return fallback;
    if (!SECONDS.test(text)) {
      throw new SdserveError('SDS_ERR_CONFIG', `config parameter '${name}' must be a number of seconds >= 0 (0: no limit), got ${quoted(text)}`);
    }
    return Number(text);
  };
  const deadline = seconds('max_execution_secs', makesImages(capabilities) ? IMAGE_DEADLINE_SECS : 0);
  return { deadlineMs: deadline * 1000, graceMs: seconds('execution_grace_secs', DEFAULT_GRACE_SECS) * 1000 };
}

/**
 * Times the requests one model instance is running. `cancel` is asked for those past the
 * deadline; `kill` once one of them is still running after the grace as well.
 */
export class ExecutionWatch {
  /** Calls past their deadline and not yet settled: while any is, the instance is stuck. */
  private readonly overdue = new Set<object>();

  constructor(
    /** Set again once the backend has declared what it is (see `executionDeadline`); calls already running keep theirs. */
    public deadline: ExecutionDeadline,
    private readonly cancel: (requestIds: string[]) => void,
    private readonly kill: () => void,
  ) {}

  get isStuck(): boolean {
    return this.overdue.size > 0;
  }

  /**
   * `work` as it settles, except that a call past its deadline fails with SDS_ERR_TIMEOUT
   * saying what happened to it. `requestIds` are what cancelling it names.
   */
  track<T>(requestIds: string[], work: Promise<T>): Promise<T> {
    const { deadlineMs, graceMs } = this.deadline;
    if (deadlineMs <= 0) return work;
    const call = {};
    let killed = false;
    let graceTimer: NodeJS.Timeout | undefined;
    const deadlineTimer = setTimeout(() => {
      this.overdue.add(call);
      this.cancel(requestIds);
      graceTimer = setTimeout(() => {
        killed = true;
        this.kill();
      }, graceMs);
    }, deadlineMs);
    const settle = (): boolean => {
      clearTimeout(deadlineTimer);
      clearTimeout(graceTimer);
      return this.overdue.delete(call);
    };
    const timedOut = () => new SdserveError('SDS_ERR_TIMEOUT',
      `the request ran past the model's execution deadline of ${deadlineMs / 1000} s (config parameter max_execution_secs) and was cancelled`
      + (killed ? `; it did not stop within ${graceMs / 1000} s more, so its backend was restarted` : ''));
    return work.then(
      (value) => {
        if (!settle()) return value;
        // A batch answers each request: the ones the model gave up on are reported as timed out.
        return (Array.isArray(value)
          ? value.map((result: unknown) => (isCancellation(result) ? timedOut() : result))
          : value) as T;
      },
      (err: unknown) => {
        const overdue = settle();
        throw overdue ? timedOut() : err;
      },
    );
  }
}

function isCancellation(result: unknown): boolean {
  return result instanceof SdserveError && result.code === 'SDS_ERR_CANCELLED';
}
