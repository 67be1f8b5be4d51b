/**
 * Per-client progress bars on stderr. Bars only make sense on a terminal, so when disabled or
 * when the stream is not a TTY every method is a no-op and lines are written through unchanged.
 */
import cliProgress from 'cli-progress';

export interface ClientProgress {
  /** Counts one finished request (success or failure) for `client`. */
  advance(client: number, failed: boolean): void;
  /** The denoising step `client`'s current request has reached (step bars only). */
  step(client: number, step: number, steps: number): void;
  /** Writes a line without tearing the bars. */
  log(line: string): void;
  stop(): void;
}

export interface ProgressTarget extends NodeJS.WritableStream {
  isTTY?: boolean;
}

export function createClientProgress(options: {
  enabled: boolean;
  stream: ProgressTarget;
  clients: number;
  requestsPerClient: number;
  /** One bar per client over its current request's denoising steps, instead of its requests. */
  steps?: boolean;
}): ClientProgress {
  const { enabled, stream, clients, requestsPerClient } = options;
  if (!enabled || stream.isTTY !== true) {
    return {
      advance: () => {},
      step: () => {},
      log: (line) => { stream.write(`${line}\n`); },
      stop: () => {},
    };
  }
  const format = options.steps
    ? 'client {client} [{bar}] step {value}/{total} | request {request}/{requests} failed: {failed} | {duration_formatted}'
    : 'client {client} [{bar}] {value}/{total} failed: {failed} | {duration_formatted}';
  const multibar = new cliProgress.MultiBar({
    stream: stream as NodeJS.WriteStream,
    format,
    clearOnComplete: false,
    hideCursor: true,
  }, cliProgress.Presets.shades_classic);
  const bars = Array.from({ length: clients }, (_, client) => multibar.create(options.steps ? 1 : requestsPerClient, 0,
    { client, failed: 0, request: 0, requests: requestsPerClient }));
  const failures = new Array<number>(clients).fill(0);
  const finished = new Array<number>(clients).fill(0);
  return {
    advance(client, failed) {
      if (failed) failures[client] += 1;
      finished[client] += 1;
      if (options.steps) bars[client].update({ failed: failures[client], request: finished[client] });
      else bars[client].increment(1, { failed: failures[client] });
    },
    step(client, step, steps) {
      bars[client].setTotal(steps);
      bars[client].update(step);
    },
    log: (line) => multibar.log(`${line}\n`),
    stop: () => multibar.stop(),
  };
}
