export { buildHttpServer, DEFAULT_BODY_LIMIT_BYTES, DEFAULT_HTTP_LIMITS, type HttpLimits, type HttpServerOptions } from './server.js';
export { httpStatusOf } from './error-reply.js';
export {
  decodeInferRequest, encodeInferResponse, wantsBinary,
  type DecodedInferRequest, type EncodedInferResponse, type OutputFormat, type WireInferRequest,
} from './infer-codec.js';
export { OPENAPI_DOCUMENT, OPENAPI_PATH, registeredRoutes, type RouteEntry } from './openapi.js';
