/**
 * The gRPC front end's one gate: a server interceptor that checks the API key (`authorization:
 * Bearer <key>` metadata) and Triton's restricted protocol groups (`triton-grpc-protocol-<header>`
 * metadata) before any handler runs, so every RPC, present or future, is covered. An RPC not
 * named here is `inference` (fail closed).
 */
import { Metadata, ServerInterceptingCall, status, type ServerInterceptor } from '@grpc/grpc-js';
import { toSdserveError } from '../../errors.js';
import { checkAccess, GRPC_RESTRICTED_HEADER_PREFIX, type AccessPolicy, type ApiGroup } from '../access-policy.js';

/** inference.GRPCInferenceService RPCs → Triton API group (grpc_server.cc's categories). */
const GROUP_OF_RPC: Readonly<Record<string, ApiGroup>> = {
  ServerLive: 'health',
  ServerReady: 'health',
  ModelReady: 'health',
  ServerMetadata: 'metadata',
  ModelMetadata: 'metadata',
  ModelInfer: 'inference',
  ModelStreamInfer: 'inference',
  ModelConfig: 'model-config',
  ModelStatistics: 'statistics',
  RepositoryIndex: 'model-repository',
  RepositoryModelLoad: 'model-repository',
  RepositoryModelUnload: 'model-repository',
  SystemSharedMemoryStatus: 'shared-memory',
  SystemSharedMemoryRegister: 'shared-memory',
  SystemSharedMemoryUnregister: 'shared-memory',
  CudaSharedMemoryStatus: 'shared-memory',
  CudaSharedMemoryRegister: 'shared-memory',
  CudaSharedMemoryUnregister: 'shared-memory',
  TraceSetting: 'trace',
  LogSettings: 'logging',
};

/** The API group of a method path such as `/inference.GRPCInferenceService/ModelInfer`. */
export function apiGroupOfRpc(path: string): ApiGroup {
  return GROUP_OF_RPC[path.slice(path.lastIndexOf('/') + 1)] ?? 'inference';
}

function firstString(metadata: Metadata, key: string): string | undefined {
  const value = metadata.get(key)[0];
  return typeof value === 'string' ? value : undefined;
}

/** A server interceptor enforcing `policy` on every call. */
export function accessInterceptor(policy: AccessPolicy): ServerInterceptor {
  return (method, call) => new ServerInterceptingCall(call, {
    start: (next) => next({
      onReceiveMetadata: (metadata, passOn) => {
        try {
          checkAccess(policy, apiGroupOfRpc(method.path), (key) => firstString(metadata, key), GRPC_RESTRICTED_HEADER_PREFIX);
        } catch (err) {
          const error = toSdserveError(err);
          call.sendStatus({ code: status[error.grpcStatus], details: error.message, metadata: new Metadata() });
          return;
        }
        passOn(metadata);
      },
    }),
  });
}
