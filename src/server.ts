import type { FastifyInstance } from 'fastify';
import type { AddressInfo } from 'node:net';
import { DataPlane, detectGpuCount, formatModelTable, ModelManager, type ModelControlMode } from './core/index.js';
import type { Logger } from './logger.js';
import { startMetricsServer } from './metrics/index.js';
import path from 'node:path';
import { PROJECT_ROOT } from './paths.js';
import { startGrpcServer } from './protocol/grpc/index.js';
import { buildHttpServer } from './protocol/http/index.js';

/** How long a backend process may take to finalize when stopped before it is killed. */
export const STOP_GRACE_MS = 10_000;

export interface ServerOptions {
  modelRepositories: string[];
  modelControlMode: ModelControlMode;
  loadModels: string[];
  repositoryPollSecs: number;
  host: string;
  httpPort: number;
  grpcPort: number;
  metricsPort: number;
  pythonExecutable: string;
  exitOnError: boolean;
  backendStartTimeoutMs: number;
  backendLoadTimeoutMs: number;
  /** `--backend-directory`: folders of more backends (`<name>/model.py`) besides the built-in ones. */
  backendDirectories?: string[];
  /** `--allowed-path`: folders outside the model folders that model configs may name. */
  allowedPaths?: string[];
  logger: Logger;
  /** Where the start-up lines (model table, service addresses) go. */
  print: (line: string) => void;
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
  // 1. models
  const gpuCount = detectGpuCount();
  const models = new ModelManager(options.modelRepositories, {
    pythonExecutable: options.pythonExecutable,
    projectRoot: PROJECT_ROOT,
    gpuCount,
    startTimeoutMs: options.backendStartTimeoutMs,
    loadTimeoutMs: options.backendLoadTimeoutMs,
    stopGraceMs: STOP_GRACE_MS,
    logger: options.logger,
  }, {
    builtInBackends: path.join(PROJECT_ROOT, 'python', 'sdserve_backend', 'backends'),
    backendDirectories: (options.backendDirectories ?? []).map((dir) => path.resolve(dir)),
    allowedPaths: (options.allowedPaths ?? []).map((dir) => path.resolve(dir)),
  });
  await models.start(options.modelControlMode, options.loadModels);
  if (options.modelControlMode === 'poll') models.startPolling(options.repositoryPollSecs * 1000);
  const rows = models.attemptedStatuses();
  options.print(formatModelTable(rows));
  const core = new DataPlane(models);
  if (options.exitOnError && rows.some((row) => row.state !== 'READY')) {
    await core.shutdown();
    throw new Error('failed to load all models');
  }

  // 2. front ends (a front end that cannot start stops what already runs)
  const closers: Array<() => Promise<unknown>> = [];
  const closeAll = async () => {
    await Promise.all(closers.map((close) => close()));
    await core.shutdown();
  };
  try {
    const http: FastifyInstance = buildHttpServer(core, { logger: false });
    closers.push(() => http.close());
    await http.listen({ host: options.host, port: options.httpPort });
    const httpPort = (http.server.address() as AddressInfo).port;
    const grpc = await startGrpcServer(core, { host: options.host, port: options.grpcPort });
    closers.push(() => grpc.close());
    options.print(`Started GRPCInferenceService at ${options.host}:${grpc.port}`);
    options.print(`Started HTTPService at ${options.host}:${httpPort}`);
    const metrics = await startMetricsServer(core, { host: options.host, port: options.metricsPort });
    closers.push(() => metrics.close());
    options.print(`Started Metrics Service at ${options.host}:${metrics.port}`);
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
