/**
 * Starts the gRPC front end: loads proto/grpc_service.proto at run time and serves
 * inference.GRPCInferenceService over an InferenceCore.
 */
import path from 'node:path';
import {
  loadPackageDefinition, Server, ServerCredentials, type GrpcObject, type ServiceClientConstructor,
} from '@grpc/grpc-js';
import { load } from '@grpc/proto-loader';
import type { InferenceCore } from '../../core/inference-core.js';
import { PROJECT_ROOT } from '../../paths.js';
import { createServicer } from './servicer.js';

/** The .proto files, found from the project root (this file runs from dist/src/protocol/grpc/). */
export const PROTO_DIR = path.join(PROJECT_ROOT, 'proto');

/** How the .proto files are decoded; wire-types.ts describes the objects this yields. */
export const PROTO_LOADER_OPTIONS = {
  keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true, includeDirs: [PROTO_DIR],
};

/** Force-closes connections still open this long after `close()` (e.g. idle streams). */
const SHUTDOWN_GRACE_MS = 5000;

export interface GrpcServerOptions {
  host: string;
  port: number;
}

export interface GrpcServerHandle {
  /** The bound port (the one chosen by the OS when `port` was 0). */
  port: number;
  /** Stops accepting calls, lets running ones finish (up to a grace period), then resolves. */
  close(): Promise<void>;
}

let service: Promise<ServiceClientConstructor> | undefined;

/** inference.GRPCInferenceService, loaded once. */
export function loadInferenceService(): Promise<ServiceClientConstructor> {
  service ??= load('grpc_service.proto', PROTO_LOADER_OPTIONS).then((definition) => {
    const inference = loadPackageDefinition(definition).inference as GrpcObject;
    return inference.GRPCInferenceService as ServiceClientConstructor;
  });
  return service;
}

function bindAddress(host: string, port: number): string {
  return host.includes(':') && !host.startsWith('[') ? `[${host}]:${port}` : `${host}:${port}`;
}

/** Serves the KServe v2 / Triton gRPC protocol over `core` on `options.host:options.port`. */
export async function startGrpcServer(
  core: InferenceCore, options: GrpcServerOptions,
): Promise<GrpcServerHandle> {
  const constructor = await loadInferenceService();
  // Images exceed grpc's 4 MiB default; Triton does not cap message sizes either.
  const server = new Server({ 'grpc.max_receive_message_length': -1, 'grpc.max_send_message_length': -1 });
  server.addService(constructor.service, createServicer(core));
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(bindAddress(options.host, options.port), ServerCredentials.createInsecure(),
      (err, bound) => (err ? reject(err) : resolve(bound)));
  });
  return {
    port,
    close: () => new Promise<void>((resolve) => {
      const force = setTimeout(() => server.forceShutdown(), SHUTDOWN_GRACE_MS).unref();
      server.tryShutdown(() => { clearTimeout(force); resolve(); });
    }),
  };
}
