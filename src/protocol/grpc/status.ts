/**
 * The one place gRPC status codes are chosen for errors: an SdserveError's catalog name
 * (src/errors.ts) picks the code and its message travels as the status details, the same text
 * the HTTP front end puts in `{"error": ...}`. Anything else is INTERNAL.
 */
import { Metadata, status, type ServerErrorResponse, type sendUnaryData } from '@grpc/grpc-js';
import { toSdserveError } from '../../errors.js';

/** The ServiceError grpc-js sends for anything thrown by a handler, a codec or the core. */
export function toGrpcError(err: unknown): ServerErrorResponse {
  const error = toSdserveError(err);
  return Object.assign(new Error(error.message), {
    code: status[error.grpcStatus], details: error.message, metadata: new Metadata(),
  });
}

/**
 * Runs a unary handler body and answers with its result or its mapped error, so each handler
 * only decodes, calls the core and encodes.
 */
export function answer<T>(callback: sendUnaryData<T>, body: () => T | Promise<T>): void {
  Promise.resolve()
    .then(body)
    .then((value) => callback(null, value), (err: unknown) => callback(toGrpcError(err)));
}

/** An UNIMPLEMENTED answer for the Triton RPCs sdserve does not serve. */
export function unimplemented(rpc: string, why: string): ServerErrorResponse {
  const message = `${rpc} is not supported by sdserve: ${why}`;
  return Object.assign(new Error(message), { code: status.UNIMPLEMENTED, details: message, metadata: new Metadata() });
}
