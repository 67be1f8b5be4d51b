import { Command, InvalidArgumentError, Option } from 'commander';
import { createLogger, type LogFormat } from '../logger.js';
import { defaultPythonExecutable } from '../paths.js';
import { startServer } from '../server.js';

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
        logger: createLogger(options.logVerbose, options.logFormat),
        print: (line) => process.stdout.write(`${line}\n`),
      });
      const shutdown = () => {
        process.stdout.write('Shutting down\n');
        void server.close().finally(() => process.exit(0));
      };
      process.once('SIGINT', shutdown);
      process.once('SIGTERM', shutdown);
    });
}
