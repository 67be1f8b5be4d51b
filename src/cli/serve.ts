import { Command, InvalidArgumentError, Option } from 'commander';
import { createLogger, type LogFormat } from '../logger.js';
import { defaultEngineCacheDir, defaultPythonExecutable } from '../paths.js';
import { parseRestrictedApis } from '../protocol/access-policy.js';
import { startServer, STOP_GRACE_MS } from '../server.js';

interface ServeOptions {
  modelRepository: string[];
  modelControlMode: 'none' | 'explicit' | 'poll';
  loadModel: string[];
  repositoryPollSecs: number;
  httpAddress: string;
  grpcAddress?: string;
  metricsAddress?: string;
  httpPort: number;
  grpcPort: number;
  metricsPort: number;
  logVerbose: number;
  logFormat: LogFormat;
  exitOnError: boolean;
  backendPython: string;
  engineCacheDir: string;
  backendLoadTimeout: number;
  backendPrestart: boolean;
  exitTimeoutSecs: number;
  backendDirectory: string[];
  allowedPath: string[];
  apiKey?: string;
  httpRestrictedApi: string[];
  grpcRestrictedProtocol: string[];
  grpcRestrictedApi: string[];
  httpCorsOrigin: string[];
  httpSslCert?: string;
  httpSslKey?: string;
  grpcUseSsl: boolean;
  grpcUseSslMutual: boolean;
  grpcServerCert?: string;
  grpcServerKey?: string;
  grpcRootCert?: string;
  httpMaxInputSize: number;
  grpcMaxMessageSize: number;
  httpMaxConnections: number;
  grpcMaxConnections: number;
  httpHeaderTimeoutSecs: number;
  httpKeepaliveTimeoutSecs: number;
}

const MIB = 1024 * 1024;

/** `scheme://host[:port]`, as browsers send in `Origin`. */
function origin(value: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new InvalidArgumentError(`'${value}' is not an origin (scheme://host[:port])`);
  }
  if (url.origin === 'null' || url.origin !== value.replace(/\/$/, '')) {
    throw new InvalidArgumentError(`'${value}' is not an origin (scheme://host[:port], no path)`);
  }
  return url.origin;
}

/** The TLS files, checking the flags that only work together. */
function tlsFiles(options: ServeOptions) {
  if ((options.httpSslCert === undefined) !== (options.httpSslKey === undefined)) {
    throw new InvalidArgumentError('--http-ssl-cert and --http-ssl-key go together');
  }
  const grpcSsl = options.grpcUseSsl || options.grpcUseSslMutual;
  if (grpcSsl && (options.grpcServerCert === undefined || options.grpcServerKey === undefined)) {
    throw new InvalidArgumentError('--grpc-use-ssl needs --grpc-server-cert and --grpc-server-key');
  }
  if (options.grpcUseSslMutual && options.grpcRootCert === undefined) {
    throw new InvalidArgumentError('--grpc-use-ssl-mutual needs --grpc-root-cert (the CA of the client certificates)');
  }
  return {
    httpTls: options.httpSslCert !== undefined && options.httpSslKey !== undefined
      ? { certFile: options.httpSslCert, keyFile: options.httpSslKey } : undefined,
    grpcTls: grpcSsl ? {
      certFile: options.grpcServerCert as string, keyFile: options.grpcServerKey as string,
      ...(options.grpcRootCert !== undefined && { rootCertFile: options.grpcRootCert }), mutual: options.grpcUseSslMutual,
    } : undefined,
  };
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
    .option('--http-address <address>', 'address the HTTP service binds (0.0.0.0: every interface)', '127.0.0.1')
    .option('--grpc-address <address>', 'address the gRPC service binds (default: --http-address)')
    .option('--metrics-address <address>', 'address the metrics service binds (default: --http-address)')
    .option('--http-port <port>', 'HTTP port (0: any free port)', port, 8000)
    .option('--grpc-port <port>', 'gRPC port (0: any free port)', port, 8001)
    .option('--metrics-port <port>', 'metrics port', port, 8002)
    .addOption(new Option('--api-key <key>', "require 'Authorization: Bearer <key>' on every HTTP, gRPC and metrics request")
      .env('SDSERVE_API_KEY'))
    .option('--http-restricted-api <API[,API]:HEADER=VALUE>',
      'HTTP API groups that need HEADER=VALUE (repeatable; health, metadata, inference, shared-memory, model-config, model-repository, statistics, trace, logging)', collect, [])
    .option('--grpc-restricted-protocol <API[,API]:HEADER=VALUE>',
      "gRPC API groups that need metadata 'triton-grpc-protocol-HEADER: VALUE' (repeatable)", collect, [])
    .addOption(new Option('--grpc-restricted-api <API[,API]:HEADER=VALUE>', 'alias of --grpc-restricted-protocol')
      .argParser(collect).default([]).hideHelp())
    .option('--http-cors-origin <origin>', 'origin (scheme://host[:port]) whose web pages may call the HTTP API (repeatable; default: none)',
      (value: string, previous: string[]) => [...previous, origin(value)], [])
    .option('--http-ssl-cert <file>', 'PEM certificate (chain): serve HTTPS and metrics over TLS')
    .option('--http-ssl-key <file>', 'PEM private key of --http-ssl-cert')
    .option('--grpc-use-ssl', 'serve gRPC over TLS (--grpc-server-cert, --grpc-server-key)', false)
    .option('--grpc-use-ssl-mutual', 'serve gRPC over mutual TLS: clients need a certificate from --grpc-root-cert', false)
    .option('--grpc-server-cert <file>', 'PEM certificate (chain) of the gRPC service')
    .option('--grpc-server-key <file>', 'PEM private key of --grpc-server-cert')
    .option('--grpc-root-cert <file>', 'PEM CA certificate that client certificates must chain to')
    .option('--http-max-input-size <bytes>', 'largest HTTP request body, raw or inflated', positiveInteger, 64 * MIB)
    .option('--grpc-max-message-size <bytes>', 'largest gRPC request message', positiveInteger, 64 * MIB)
    .option('--http-max-connections <count>', 'open HTTP connections beyond this are refused', positiveInteger, 1024)
    .option('--grpc-max-connections <count>', 'open gRPC connections beyond this are refused', positiveInteger, 1024)
    .option('--http-header-timeout-secs <seconds>', 'time a client has to send its request headers', positiveInteger, 30)
    .option('--http-keepalive-timeout-secs <seconds>', 'how long an idle keep-alive connection stays open', positiveInteger, 72)
    .option('--log-verbose <level>', 'verbose logging level', nonNegativeInteger, 0)
    .addOption(new Option('--log-format <format>', 'log line format').choices(['default', 'json']).default('default'))
    .option('--exit-on-error', 'exit when a model fails to load at start', false)
    .option('--backend-python <path>', 'Python interpreter for backend processes', defaultPythonExecutable())
    .option('--engine-cache-dir <dir>',
      'where GPU engines and compiled kernels are kept, per model and version (the repository may be read-only)', defaultEngineCacheDir())
    .option('--backend-load-timeout <seconds>', 'how long a backend may take to load its model', nonNegativeInteger, 600)
    .option('--backend-prestart',
      'keep a backend process per GPU started ahead, torch and the model code imported, so a load only loads the model', false)
    .option('--exit-timeout-secs <seconds>',
      'on SIGTERM/SIGINT: how long requests in flight may take to finish before the server exits anyway', nonNegativeInteger, 30)
    .option('--backend-directory <path>',
      'folder of more backends, one <name>/model.py each, that model configs may name (repeatable)', collect, [])
    .option('--allowed-path <path>',
      'folder outside the model folders that model configs may name as weights or engine_cache_dir (repeatable)', collect, [])
    .action(async (options: ServeOptions & { modelStore: string[] }) => {
      const repositories = [...options.modelRepository, ...options.modelStore];
      if (repositories.length === 0) throw new InvalidArgumentError('--model-repository is required');
      if (options.apiKey !== undefined && options.apiKey.trim().length < 8) {
        throw new InvalidArgumentError('--api-key: use at least 8 characters');
      }
      const apiKey = options.apiKey?.trim();
      const restriction = (specs: string[], flag: string) => {
        try {
          return parseRestrictedApis(specs, flag);
        } catch (err) {
          throw new InvalidArgumentError((err as Error).message);
        }
      };
      const httpRestrictions = restriction(options.httpRestrictedApi, '--http-restricted-api');
      const grpcRestrictions = restriction([...options.grpcRestrictedProtocol, ...options.grpcRestrictedApi], '--grpc-restricted-protocol');
      const logger = createLogger(options.logVerbose, options.logFormat);
      // With --log-format json every line is JSON: the model table, start and stop lines included.
      const say = options.logFormat === 'json'
        ? (line: string, fields?: object) => logger.info(line, fields)
        : (line: string) => { process.stdout.write(`${line}\n`); };
      const server = await startServer({
        ...tlsFiles(options),
        httpAccess: { ...(apiKey !== undefined && { apiKey }), restrictions: httpRestrictions },
        grpcAccess: { ...(apiKey !== undefined && { apiKey }), restrictions: grpcRestrictions },
        corsOrigins: options.httpCorsOrigin,
        httpLimits: {
          maxInputBytes: options.httpMaxInputSize,
          maxConnections: options.httpMaxConnections,
          headersTimeoutMs: options.httpHeaderTimeoutSecs * 1000,
          keepAliveTimeoutMs: options.httpKeepaliveTimeoutSecs * 1000,
        },
        grpcMaxMessageBytes: options.grpcMaxMessageSize,
        grpcMaxConnections: options.grpcMaxConnections,
        ...(options.grpcAddress !== undefined && { grpcHost: options.grpcAddress }),
        ...(options.metricsAddress !== undefined && { metricsHost: options.metricsAddress }),
        modelRepositories: repositories,
        modelControlMode: options.modelControlMode,
        loadModels: options.loadModel,
        repositoryPollSecs: options.repositoryPollSecs,
        host: options.httpAddress,
        httpPort: options.httpPort,
        grpcPort: options.grpcPort,
        metricsPort: options.metricsPort,
        pythonExecutable: options.backendPython,
        engineCacheDir: options.engineCacheDir,
        exitOnError: options.exitOnError,
        backendStartTimeoutMs: 60_000,
        backendLoadTimeoutMs: options.backendLoadTimeout * 1000,
        backendPrestart: options.backendPrestart,
        backendDirectories: options.backendDirectory,
        allowedPaths: options.allowedPath,
        logger,
        print: say,
      });
      const shutdown = (signal: string) => {
        const inFlight = server.core.requestsInFlight;
        say(`Shutting down (${signal}): not ready, refusing new requests; waiting up to ${options.exitTimeoutSecs} s `
          + `for ${inFlight} request(s) in flight`);
        // A backend that ignores cancellation must not hold the exit forever.
        const hardStop = () => setTimeout(() => process.exit(1), STOP_GRACE_MS + 5_000).unref();
        const exitTimer = setTimeout(hardStop, options.exitTimeoutSecs * 1000).unref();
        void server.drainAndClose(options.exitTimeoutSecs * 1000).then((drained) => {
          clearTimeout(exitTimer);
          if (!drained) say(`Exit timeout of ${options.exitTimeoutSecs} s expired with requests in flight; they were aborted`);
          say('Server stopped');
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
