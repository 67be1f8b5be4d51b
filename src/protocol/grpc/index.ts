export {
  loadInferenceService, PROTO_DIR, PROTO_LOADER_OPTIONS, startGrpcServer,
  type GrpcServerHandle, type GrpcServerOptions,
} from './server.js';
export { contentsToRaw, decodeInferRequest, decodeParameters, encodeInferResponse, encodeParameters } from './infer-codec.js';
export { toGrpcError } from './status.js';
export type * from './wire-types.js';
