/**
 * Per-client progress bars on stderr. Bars only make sense on a terminal, so when disabled or
 * when the stream is not a TTY every method is a no-op and lines are written through unchanged.
 */
import cliProgress from 'cli-progress';

export interface ClientProgress {
  /** Counts one finished request (success or failure) for `client`. */
  advance(client: number, failed: boolean): void;
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
}): ClientProgress {
  const { enabled, stream, clients, requestsPerClient } = options;
  if (!enabled || stream.isTTY !== true) {
    return {
      advance: () => {},
      log: (line) => { stream.write(`${line}\n`); },
      stop: () => {},
    };
  }
  const multibar = new cliProgress.MultiBar({
    stream: stream as NodeJS.WriteStream,
    format: 'client {client} [{bar}] {value}/{total} failed: {failed} | {duration_formatted}',
    clearOnComplete: false,
    hideCursor: true,
  }, cliProgress.Presets.shades_classic);
  const bars = Array.from({ length: clients }, (_, client) =>
    multibar.create(requestsPerClient, 0, { client, failed: 0 }));
  const failures = new Array<number>(clients).fill(0);
  return {
    advance(client, failed) {
      if (failed) failures[client] += 1;
      bars[client].increment(1, { failed: failures[client] });
    },
    log: (line) => multibar.log(`${line}\n`),
    stop: () => multibar.stop(),
  };
}
