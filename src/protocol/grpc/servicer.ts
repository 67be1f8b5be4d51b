/**
 * The GRPCInferenceService handlers. Each one is thin: decode, call the core, encode; errors
 * are mapped to gRPC status codes in status.ts only.
 */
import type { handleUnaryCall, ServerDuplexStream, UntypedServiceImplementation } from '@grpc/grpc-js';
import type { InferenceCore } from '../../core/inference-core.js';
import { SdserveError } from '../../errors.js';
import { refuseDecoupled } from '../decoupled-models.js';
import { decodeInferRequest, encodeInferResponse } from './infer-codec.js';
import { checkUnloadParameters, decodeLoadParameters } from './repository-codec.js';
import { answer, unimplemented } from './status.js';
import { serveInferStream } from './stream.js';
import type {
  WireModelInferRequest, WireModelStreamInferResponse, WireNameVersion, WireRepositoryIndexRequest,
  WireRepositoryModelRequest,
} from './wire-types.js';

/** A unary handler whose body maps the decoded request to the response (or throws). */
function unary<Req>(body: (request: Req) => unknown): handleUnaryCall<Req, unknown> {
  return (call, callback) => answer(callback, () => body(call.request));
}

/** `version` empty on the wire means "any version" to the core. */
const optional = (version: string) => (version === '' ? undefined : version);

const SHARED_MEMORY = 'shared memory is not supported; send tensors in raw_input_contents';

const refuse = (rpc: string, why: string): handleUnaryCall<unknown, unknown> => (_call, callback) => {
  callback(unimplemented(rpc, why));
};

function modelInfer(core: InferenceCore): handleUnaryCall<WireModelInferRequest, unknown> {
  return (call, callback) => {
    // A unary call is cancelled when the client gives up or its deadline passes.
    const controller = new AbortController();
    call.on('cancelled', () => controller.abort(new SdserveError('SDS_ERR_CANCELLED', 'the client cancelled the request')));
    answer(callback, async () => {
      const request = decodeInferRequest(call.request);
      refuseDecoupled(core, 'ModelInfer RPC', request.model_name, request.model_version);
      return encodeInferResponse(await core.infer(request, controller.signal));
    });
  };
}

/** Handlers for every RPC of inference.GRPCInferenceService, over `core`. */
export function createServicer(core: InferenceCore): UntypedServiceImplementation {
  return {
    ServerLive: unary(() => ({ live: core.isLive() })),
    ServerReady: unary(() => ({ ready: core.isReady() })),
    ModelReady: unary<WireNameVersion>((r) => ({ ready: core.isModelReady(r.name, optional(r.version)) })),
    ServerMetadata: unary(() => core.serverMetadata()),
    ModelMetadata: unary<WireNameVersion>((r) => core.modelMetadata(r.name, optional(r.version))),
    ModelInfer: modelInfer(core),
    ModelStreamInfer: (call: ServerDuplexStream<WireModelInferRequest, WireModelStreamInferResponse>) => (
      serveInferStream(core, call)),
    // The typed config already uses model_config.proto's field and enum names.
    ModelConfig: unary<WireNameVersion>((r) => ({ config: core.modelConfig(r.name, optional(r.version)) })),
    ModelStatistics: unary<WireNameVersion>((r) => ({ model_stats: core.statistics(r.name || undefined, r.version || undefined) })),
    // sdserve serves one repository, so `repository_name` selects nothing.
    RepositoryIndex: unary<WireRepositoryIndexRequest>((r) => ({ models: core.repositoryIndex(r.ready) })),
    RepositoryModelLoad: unary<WireRepositoryModelRequest>(async (r) => {
      await core.loadModel(r.model_name, decodeLoadParameters(r.model_name, r.parameters));
      return {};
    }),
    RepositoryModelUnload: unary<WireRepositoryModelRequest>(async (r) => {
      checkUnloadParameters(r.model_name, r.parameters);
      await core.unloadModel(r.model_name);
      return {};
    }),
    SystemSharedMemoryStatus: refuse('SystemSharedMemoryStatus', SHARED_MEMORY),
    SystemSharedMemoryRegister: refuse('SystemSharedMemoryRegister', SHARED_MEMORY),
    SystemSharedMemoryUnregister: refuse('SystemSharedMemoryUnregister', SHARED_MEMORY),
    CudaSharedMemoryStatus: refuse('CudaSharedMemoryStatus', SHARED_MEMORY),
    CudaSharedMemoryRegister: refuse('CudaSharedMemoryRegister', SHARED_MEMORY),
    CudaSharedMemoryUnregister: refuse('CudaSharedMemoryUnregister', SHARED_MEMORY),
    TraceSetting: refuse('TraceSetting', 'tracing is not supported'),
    LogSettings: refuse('LogSettings', 'log settings are chosen on the command line'),
  };
}
