import { pino } from 'pino';

export interface Logger {
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
  debug(message: string): void;
}

/** Logs go to stderr as JSON lines; `--log-verbose N` (N >= 1) adds debug lines. */
export function createLogger(verbosity = 0): Logger {
  const log = pino({ level: verbosity > 0 ? 'debug' : 'info', base: { pid: process.pid } }, pino.destination(2));
  return {
    info: (m) => log.info(m),
    warn: (m) => log.warn(m),
    error: (m) => log.error(m),
    debug: (m) => log.debug(m),
  };
}

export const silentLogger: Logger = { info() {}, warn() {}, error() {}, debug() {} };
