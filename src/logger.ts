import { pino } from 'pino';
import { PinoPretty } from 'pino-pretty';

export interface Logger {
  /** `fields` go into a JSON line as they are (`--log-format json`); readable lines show the message. */
  info(message: string, fields?: object): void;
  warn(message: string): void;
  error(message: string): void;
  debug(message: string): void;
}

export type LogFormat = 'default' | 'json';

/**
 * Logs go to stderr: readable lines by default, JSON lines with `--log-format json` (for log
 * collectors); `--log-verbose N` (N >= 1) adds debug lines.
 */
export function createLogger(verbosity = 0, format: LogFormat = 'default'): Logger {
  const destination = format === 'json'
    ? pino.destination(2)
    : PinoPretty({ destination: 2, sync: true, colorize: false, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname' });
  const log = pino({ level: verbosity > 0 ? 'debug' : 'info' }, destination);
  return {
    info: (m, fields) => (fields === undefined ? log.info(m) : log.info(fields, m)),
    warn: (m) => log.warn(m),
    error: (m) => log.error(m),
    debug: (m) => log.debug(m),
  };
}
