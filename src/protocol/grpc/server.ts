/**
 * Starts the gRPC front end: loads proto/grpc_service.proto at run time and serves
 * inference.GRPCInferenceService over an InferenceCore.
 */
import { readFileSync } from 'node:fs';
import { createServer as createTcpServer, type AddressInfo, type Socket } from 'node:net';
import path from 'node:path';
import {
  loadPackageDefinition, Server, ServerCredentials, type GrpcObject, type ServiceClientConstructor,
} from '@grpc/grpc-js';
import { load } from '@grpc/proto-loader';
import type { InferenceCore } from '../../core/inference-core.js';
import { PROJECT_ROOT } from '../../paths.js';
import { OPEN_POLICY, type AccessPolicy } from '../access-policy.js';
import { accessInterceptor } from './access-interceptor.js';
import { createServicer } from './servicer.js';

/** The .proto files, found from the project root (this file runs from dist/src/protocol/grpc/). */
export const PROTO_DIR = path.join(PROJECT_ROOT, 'proto');

/** How the .proto files are decoded; wire-types.ts describes the objects this yields. */
export const PROTO_LOADER_OPTIONS = {
  keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true, includeDirs: [PROTO_DIR],
};

/** Force-closes connections still open this long after `close()` (e.g. idle streams). */
const SHUTDOWN_GRACE_MS = 5000;

/**
 * Largest request message by default: the HTTP front end's body limit. grpc-js would take 1 GB
 * with -1 (Triton sets no limit either); images in requests are megabytes.
 */
export const DEFAULT_GRPC_MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

/** An idle connection (no call in flight) is closed after this long by default. */
export const DEFAULT_GRPC_IDLE_TIMEOUT_MS = 5 * 60_000;
/** Open connections beyond this are closed on accept, by default. */
export const DEFAULT_GRPC_MAX_CONNECTIONS = 1024;
/** A connection that has sent no byte by then is closed, by default. */
export const DEFAULT_GRPC_SILENT_TIMEOUT_MS = 30_000;

/** PEM files for TLS (Triton's --grpc-use-ssl, --grpc-server-cert, ...). */
export interface GrpcTlsFiles {
  certFile: string;
  keyFile: string;
  /** CA certificate the clients' certificates must chain to (mutual TLS). */
  rootCertFile?: string;
  /** Require a client certificate (Triton's --grpc-use-ssl-mutual). */
  mutual?: boolean;
}

export interface GrpcServerOptions {
  host: string;
  port: number;
  /** API key and restricted protocol groups. Default: open. */
  access?: AccessPolicy;
  /** Serve TLS from these files; absent: plaintext. */
  tls?: GrpcTlsFiles;
  /** Largest request message in bytes (larger ones: RESOURCE_EXHAUSTED). */
  maxMessageBytes?: number;
  /** Idle connections are closed after this many ms. */
  idleTimeoutMs?: number;
  /** Open connections beyond this are closed on accept. */
  maxConnections?: number;
  /** A connection that sends nothing for this many ms after connecting is closed. */
  silentTimeoutMs?: number;
}

function serverCredentials(tls: GrpcTlsFiles | undefined): ServerCredentials {
  if (tls === undefined) return ServerCredentials.createInsecure();
  const root = tls.rootCertFile === undefined ? null : readFileSync(tls.rootCertFile);
  if (tls.mutual === true && root === null) throw new Error('mutual TLS needs --grpc-root-cert (the CA of the client certificates)');
  return ServerCredentials.createSsl(
    root, [{ cert_chain: readFileSync(tls.certFile), private_key: readFileSync(tls.keyFile) }], tls.mutual === true,
  );
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

/**
 * Hands a connection to grpc-js once the client has sent its first bytes, and closes it if it
 * sends none within `timeoutMs`. (Once grpc-js holds a connection it keeps a silent one open;
 * after the first bytes, HTTP/2 session idleness, grpc.max_connection_idle_ms, takes over.)
 */
function injectWhenSpoken(socket: Socket, inject: (socket: Socket) => void, timeoutMs: number): void {
  const timer = setTimeout(() => socket.destroy(), timeoutMs).unref();
  socket.once('close', () => clearTimeout(timer));
  socket.once('data', (first: Buffer) => {
    clearTimeout(timer);
    socket.pause();
    socket.unshift(first);
    inject(socket);
  });
}

/** Serves the KServe v2 / Triton gRPC protocol over `core` on `options.host:options.port`. */
export async function startGrpcServer(
  core: InferenceCore, options: GrpcServerOptions,
): Promise<GrpcServerHandle> {
  const constructor = await loadInferenceService();
  const credentials = serverCredentials(options.tls);
  const server = new Server({
    // Images exceed grpc's 4 MiB default; responses are the server's own, so only requests are capped.
    'grpc.max_receive_message_length': options.maxMessageBytes ?? DEFAULT_GRPC_MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': -1,
    'grpc.max_connection_idle_ms': options.idleTimeoutMs ?? DEFAULT_GRPC_IDLE_TIMEOUT_MS,
    interceptors: [accessInterceptor(options.access ?? OPEN_POLICY)],
  });
  server.addService(constructor.service, createServicer(core));
  // sdserve accepts the TCP connections itself and hands them to grpc-js, which has no
  // connection cap and keeps a silent connection open forever.
  const injector = server.createConnectionInjector(credentials);
  const silentTimeoutMs = options.silentTimeoutMs ?? DEFAULT_GRPC_SILENT_TIMEOUT_MS;
  const listener = createTcpServer((socket) => {
    socket.on('error', () => undefined);
    injectWhenSpoken(socket, (spoken) => injector.injectConnection(spoken), silentTimeoutMs);
  });
  listener.maxConnections = options.maxConnections ?? DEFAULT_GRPC_MAX_CONNECTIONS;
  await new Promise<void>((resolve, reject) => {
    listener.once('error', reject);
    listener.listen(options.port, options.host, () => resolve());
  });
  return {
    port: (listener.address() as AddressInfo).port,
    close: () => new Promise<void>((resolve) => {
      listener.close();
      const force = setTimeout(() => server.forceShutdown(), SHUTDOWN_GRACE_MS).unref();
      server.tryShutdown(() => { clearTimeout(force); resolve(); });
    }),
  };
}
