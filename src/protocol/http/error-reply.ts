/**
 * The one place HTTP status codes are chosen for errors. sdserve errors take theirs from the
 * catalog (src/errors.ts); fastify's own client errors (413 body too large, 415, schema
 * validation 400) keep theirs; anything else is a 500. Error bodies are Triton's
 * `{"error": "..."}`, and OpenAI's `{"error": {"message", "type", "param", "code"}}` under /v1.
 */
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { quoted, SdserveError, toSdserveError } from '../../errors.js';

/** The HTTP status for anything thrown by a handler, parser or the core. */
export function httpStatusOf(err: unknown): number {
  if (err instanceof SdserveError) return err.httpStatus;
  const status = (err as Partial<FastifyError> | null)?.statusCode;
  return typeof status === 'number' && status >= 400 && status < 500 ? status : 500;
}

function sendWith(status: number, body: object, err: unknown, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  if (status >= 500) request.log.error({ err }, 'request failed');
  // RFC 6750 section 3: a 401 names the scheme the client should use.
  if (status === 401) reply.header('www-authenticate', 'Bearer');
  return reply.code(status).type('application/json').send(body);
}

/** Fastify error handler: sends `{"error": message}` with the mapped status. */
export function sendError(err: unknown, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  return sendWith(httpStatusOf(err), { error: toSdserveError(err).message }, err, request, reply);
}

const noRoute = (request: FastifyRequest) => `no route for ${request.method} ${quoted(request.url, '')}`;

/** Fastify not-found handler. */
export function sendNotFound(request: FastifyRequest, reply: FastifyReply): FastifyReply {
  return reply.code(404).type('application/json').send({ error: noRoute(request) });
}

/**
 * Fastify error handler in OpenAI's shape. An unknown model is OpenAI's 404 `model_not_found`
 * (Triton answers 400).
 */
export function sendOpenAiError(err: unknown, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  const modelNotFound = err instanceof SdserveError && err.code === 'SDS_ERR_MODEL_NOT_FOUND';
  const status = modelNotFound ? 404 : httpStatusOf(err);
  const error = {
    message: toSdserveError(err).message,
    type: status >= 500 ? 'server_error' : 'invalid_request_error',
    param: null,
    code: modelNotFound ? 'model_not_found' : null,
  };
  return sendWith(status, { error }, err, request, reply);
}

/** Fastify not-found handler in OpenAI's shape. */
export function sendOpenAiNotFound(request: FastifyRequest, reply: FastifyReply): FastifyReply {
  return sendOpenAiError(new SdserveError('SDS_ERR_NOT_FOUND', noRoute(request)), request, reply);
}

interface SchemaError {
  instancePath: string;
  message?: string;
  params?: { allowedValues?: unknown[] };
}

/**
 * Fastify schemaErrorFormatter: `invalid request body: /inputs/0/datatype must be equal to one
 * of the allowed values (BOOL, ...)`. The infer body's `/header` wrapper is not shown.
 */
export function formatSchemaError(errors: SchemaError[], dataVar: string): Error {
  const first = errors[0];
  const path = (first?.instancePath ?? '').replace(/^\/header(?=\/|$)/, '');
  const allowed = first?.params?.allowedValues;
  const detail = `${path === '' ? '' : `${quoted(path, '')} `}${first?.message ?? 'is invalid'}`
    + (Array.isArray(allowed) ? ` (${allowed.join(', ')})` : '');
  return new Error(`invalid request ${dataVar}: ${detail}`);
}
