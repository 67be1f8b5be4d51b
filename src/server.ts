import type { FastifyInstance } from 'fastify';
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { BackendSpares } from './backend/index.js';
import { backendSpawnOptions, DataPlane, detectGpus, formatModelTable, ModelManager, type BackendRuntime, type ModelControlMode } from './core/index.js';
import type { Logger } from './logger.js';
import { startMetricsServer } from './metrics/index.js';
import path from 'node:path';
import { PROJECT_ROOT } from './paths.js';
import { OPEN_POLICY, type AccessPolicy } from './protocol/access-policy.js';
import { startGrpcServer, type GrpcTlsFiles } from './protocol/grpc/index.js';
import { buildHttpServer, type HttpLimits } from './protocol/http/index.js';
import { exposureLines } from './server-exposure.js';

/** PEM files of the HTTP (and metrics) certificate. */
export interface HttpTlsFiles {
  certFile: string;
  keyFile: string;
}

/** How long a backend process may take to finalize when stopped before it is killed. */
export const STOP_GRACE_MS = 10_000;

export interface ServerOptions {
  modelRepositories: string[];
  modelControlMode: ModelControlMode;
  loadModels: string[];
  repositoryPollSecs: number;
  /** Address the HTTP service binds. */
  host: string;
  /** Addresses of the gRPC and metrics services (default: `host`). */
  grpcHost?: string;
  metricsHost?: string;
  httpPort: number;
  grpcPort: number;
  metricsPort: number;
  pythonExecutable: string;
  engineCacheDir: string;
  exitOnError: boolean;
  backendStartTimeoutMs: number;
  backendLoadTimeoutMs: number;
  /** `--backend-prestart`: keep a backend process per GPU started ahead, its imports done, for the next load. */
  backendPrestart?: boolean;
  /** `--backend-directory`: folders of more backends (`<name>/model.py`) besides the built-in ones. */
  backendDirectories?: string[];
  /** `--allowed-path`: folders outside the model folders that model configs may name. */
  allowedPaths?: string[];
  /** Access control per front end (metrics takes the HTTP policy's API key). Default: open. */
  httpAccess?: AccessPolicy;
  grpcAccess?: AccessPolicy;
  /** Origins whose web pages may call the HTTP API. */
  corsOrigins?: string[];
  httpTls?: HttpTlsFiles;
  grpcTls?: GrpcTlsFiles;
  httpLimits?: HttpLimits;
  grpcMaxMessageBytes?: number;
  grpcMaxConnections?: number;
  logger: Logger;
  /** Where the start-up lines (model table, service addresses) go. */
  /** Start-up output: the model table (with its rows as `fields`) and the listening lines. */
  print: (line: string, fields?: object) => void;
}

export interface RunningServer {
  core: DataPlane;
  httpPort: number;
  grpcPort: number;
  /** Stops at once: front ends closed, then the models unloaded. */
  close(): Promise<void>;
  /**
   * A graceful exit (SIGTERM): readiness off and new requests refused at once, the requests in
   * flight answered (up to `exitTimeoutMs`, then aborted), then `close()`. Resolves whether every
   * request in flight finished.
   */
  drainAndClose(exitTimeoutMs: number): Promise<boolean>;
}

/** Wiring only: repository and backends, the data plane, then the front ends. */
export async function startServer(options: ServerOptions): Promise<RunningServer> {
  // 1. certificates first: a bad path should stop the server before models load
  const httpTls = options.httpTls && { cert: readFileSync(options.httpTls.certFile), key: readFileSync(options.httpTls.keyFile) };

  // 2. models
  const gpus = detectGpus();
  const spares = options.backendPrestart ? new BackendSpares(options.logger) : undefined;
  const runtime: BackendRuntime = {
    pythonExecutable: options.pythonExecutable,
    projectRoot: PROJECT_ROOT,
    engineCacheDir: path.resolve(options.engineCacheDir),
    gpus,
    startTimeoutMs: options.backendStartTimeoutMs,
    loadTimeoutMs: options.backendLoadTimeoutMs,
    stopGraceMs: STOP_GRACE_MS,
    logger: options.logger,
    ...(spares !== undefined && { spares }),
  };
  // One spare per GPU, spawned as a built-in backend pinned to that GPU is (served-model.ts);
  // on a host without GPUs, one for the CPU.
  for (const env of gpus.length > 0 ? gpus.map((gpu) => ({ CUDA_VISIBLE_DEVICES: gpu })) : [{}]) {
    spares?.prestart({ ...backendSpawnOptions(runtime, env), label: 'spare' });
  }
  const models = new ModelManager(options.modelRepositories, runtime, {
    builtInBackends: path.join(PROJECT_ROOT, 'python', 'sdserve_backend', 'backends'),
    backendDirectories: (options.backendDirectories ?? []).map((dir) => path.resolve(dir)),
    allowedPaths: (options.allowedPaths ?? []).map((dir) => path.resolve(dir)),
    engineCacheDir: path.resolve(options.engineCacheDir),
  });
  try {
    await models.start(options.modelControlMode, options.loadModels);
  } catch (err) {
    await spares?.close();
    throw err;
  }
  if (options.modelControlMode === 'poll') models.startPolling(options.repositoryPollSecs * 1000);
  const rows = models.attemptedStatuses();
  options.print(formatModelTable(rows), { models: rows });
  const core = new DataPlane(models);
  if (options.exitOnError && (rows.some((row) => row.state !== 'READY') || models.startFailures.length > 0)) {
    await core.shutdown();
    await spares?.close();
    throw new Error('failed to load all models');
  }

  // 3. front ends (a front end that cannot start stops what already runs)
  const closers: Array<() => Promise<unknown>> = [];
  const closeAll = async () => {
    await Promise.all(closers.map((close) => close()));
    await spares?.close();
    await core.shutdown();
  };
  const httpAccess = options.httpAccess ?? OPEN_POLICY;
  const grpcAccess = options.grpcAccess ?? OPEN_POLICY;
  const grpcHost = options.grpcHost ?? options.host;
  const metricsHost = options.metricsHost ?? options.host;
  try {
    const http: FastifyInstance = buildHttpServer(core, {
      logger: false, access: httpAccess, corsOrigins: options.corsOrigins ?? [], tls: httpTls, limits: options.httpLimits,
    });
    closers.push(() => http.close());
    await http.listen({ host: options.host, port: options.httpPort });
    const httpPort = (http.server.address() as AddressInfo).port;
    const grpc = await startGrpcServer(core, {
      host: grpcHost, port: options.grpcPort, access: grpcAccess, tls: options.grpcTls, maxMessageBytes: options.grpcMaxMessageBytes,
      maxConnections: options.grpcMaxConnections,
    });
    closers.push(() => grpc.close());
    options.print(`Started GRPCInferenceService at ${grpcHost}:${grpc.port}`);
    options.print(`Started HTTPService at ${options.host}:${httpPort}`);
    const metrics = await startMetricsServer(core, { host: metricsHost, port: options.metricsPort, apiKey: httpAccess.apiKey, tls: httpTls });
    closers.push(() => metrics.close());
    options.print(`Started Metrics Service at ${metricsHost}:${metrics.port}`);
    for (const line of exposureLines([
      { name: 'HTTP', flag: '--http-address', host: options.host, access: httpAccess, restrictFlag: '--http-restricted-api' },
      { name: 'gRPC', flag: '--grpc-address', host: grpcHost, access: grpcAccess, restrictFlag: '--grpc-restricted-protocol' },
    ])) options.print(line);
    const drainAndClose = async (exitTimeoutMs: number) => {
      const drained = await core.drain(exitTimeoutMs);
      await closeAll();
      return drained;
    };
    return { core, httpPort, grpcPort: grpc.port, close: closeAll, drainAndClose };
  } catch (err) {
    await closeAll().catch(() => undefined);
    throw err;
  }
}
