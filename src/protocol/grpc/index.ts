export {
  loadInferenceService, PROTO_DIR, PROTO_LOADER_OPTIONS, startGrpcServer,
  DEFAULT_GRPC_MAX_MESSAGE_BYTES, type GrpcServerHandle, type GrpcServerOptions, type GrpcTlsFiles,
} from './server.js';
export { contentsToRaw, decodeInferRequest, decodeParameters, encodeInferResponse, encodeParameters } from './infer-codec.js';
export { toGrpcError } from './status.js';
export type * from './wire-types.js';
