import { Command, InvalidArgumentError, Option } from 'commander';
import { createLogger, type LogFormat } from '../logger.js';
import { defaultPythonExecutable } from '../paths.js';
import { startServer, STOP_GRACE_MS } from '../server.js';

interface ServeOptions {
  modelRepository: string[];
  modelControlMode: 'none' | 'explicit' | 'poll';
  loadModel: string[];
  repositoryPollSecs: number;
  httpAddress: string;
  httpPort: number;
  grpcPort: number;
  metricsPort: number;
  logVerbose: number;
  logFormat: LogFormat;
  exitOnError: boolean;
  backendPython: string;
  backendLoadTimeout: number;
  exitTimeoutSecs: number;
  backendDirectory: string[];
  allowedPath: string[];
}

function port(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError(`'${value}' is not a port number (0-65535)`);
  return n;
}

function nonNegativeInteger(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`'${value}' is not a non-negative integer`);
  return n;
}

function positiveInteger(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`'${value}' is not a positive integer`);
  return n;
}

const collect = (value: string, previous: string[]) => [...previous, value];

/** `sdserve serve`: tritonserver's flags, same names and defaults. */
export function registerServeCommand(program: Command): void {
  program
    .command('serve')
    .description('serve the models of a model repository over KServe v2 HTTP and gRPC')
    .option('--model-repository <path>', 'model repository folder (repeatable)', collect, [])
    .addOption(new Option('--model-store <path>', 'alias of --model-repository').argParser(collect).default([]).hideHelp())
    .addOption(new Option('--model-control-mode <mode>',
      'none: load every model at start; explicit: only --load-model ones, then the repository API; poll: follow the repository\'s changes')
      .choices(['none', 'explicit', 'poll']).default('none'))
    .option('--load-model <name>', "model to load at start in explicit mode (repeatable, '*' for all)", collect, [])
    .option('--repository-poll-secs <seconds>', 'poll mode: seconds between repository scans', positiveInteger, 15)
    .option('--http-address <address>', 'address the HTTP and gRPC services bind', '0.0.0.0')
    .option('--http-port <port>', 'HTTP port (0: any free port)', port, 8000)
    .option('--grpc-port <port>', 'gRPC port (0: any free port)', port, 8001)
    .option('--metrics-port <port>', 'metrics port', port, 8002)
    .option('--log-verbose <level>', 'verbose logging level', nonNegativeInteger, 0)
    .addOption(new Option('--log-format <format>', 'log line format').choices(['default', 'json']).default('default'))
    .option('--exit-on-error', 'exit when a model fails to load at start', false)
    .option('--backend-python <path>', 'Python interpreter for backend processes', defaultPythonExecutable())
    .option('--backend-load-timeout <seconds>', 'how long a backend may take to load its model', nonNegativeInteger, 600)
    .option('--exit-timeout-secs <seconds>',
      'on SIGTERM/SIGINT: how long requests in flight may take to finish before the server exits anyway', nonNegativeInteger, 30)
    .option('--backend-directory <path>',
      'folder of more backends, one <name>/model.py each, that model configs may name (repeatable)', collect, [])
    .option('--allowed-path <path>',
      'folder outside the model folders whose files model configs may name as weights (repeatable)', collect, [])
    .action(async (options: ServeOptions & { modelStore: string[] }) => {
      const repositories = [...options.modelRepository, ...options.modelStore];
      if (repositories.length === 0) throw new InvalidArgumentError('--model-repository is required');
      const server = await startServer({
        modelRepositories: repositories,
        modelControlMode: options.modelControlMode,
        loadModels: options.loadModel,
        repositoryPollSecs: options.repositoryPollSecs,
        host: options.httpAddress,
        httpPort: options.httpPort,
        grpcPort: options.grpcPort,
        metricsPort: options.metricsPort,
        pythonExecutable: options.backendPython,
        exitOnError: options.exitOnError,
        backendStartTimeoutMs: 60_000,
        backendLoadTimeoutMs: options.backendLoadTimeout * 1000,
        backendDirectories: options.backendDirectory,
        allowedPaths: options.allowedPath,
        logger: createLogger(options.logVerbose, options.logFormat),
        print: (line) => process.stdout.write(`${line}\n`),
      });
      const shutdown = (signal: string) => {
        const inFlight = server.core.requestsInFlight;
        process.stdout.write(`Shutting down (${signal}): not ready, refusing new requests; waiting up to ${options.exitTimeoutSecs} s `
          + `for ${inFlight} request(s) in flight\n`);
        // A backend that ignores cancellation must not hold the exit forever.
        const hardStop = () => setTimeout(() => process.exit(1), STOP_GRACE_MS + 5_000).unref();
        const exitTimer = setTimeout(hardStop, options.exitTimeoutSecs * 1000).unref();
        void server.drainAndClose(options.exitTimeoutSecs * 1000).then((drained) => {
          clearTimeout(exitTimer);
          if (!drained) process.stdout.write(`Exit timeout of ${options.exitTimeoutSecs} s expired with requests in flight; they were aborted\n`);
          process.stdout.write('Server stopped\n');
          process.exit(drained ? 0 : 1);
        }, (err: unknown) => {
          process.stderr.write(`shutdown failed: ${String(err)}\n`);
          process.exit(1);
        });
      };
      process.once('SIGINT', () => shutdown('SIGINT'));
      process.once('SIGTERM', () => shutdown('SIGTERM'));
    });
}
