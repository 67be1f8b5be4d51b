/**
 * Request body parsing for every route. Bodies are read as raw bytes whatever their
 * Content-Type (tritonclient sends none, or application/octet-stream), inflated when
 * Content-Encoding says gzip or deflate, then parsed as JSON; the infer route's body is split
 * first at `Inference-Header-Content-Length` (Triton's binary tensor data extension).
 */
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import { errorCodes, type FastifyRequest } from 'fastify';
import { invalidArg, quoted, SdserveError } from '../../errors.js';
import { parseHeaderLength, splitInferBody } from '../binary-tensor.js';
import { checkJsonText } from '../request-shape.js';
import type { WireInferRequest } from './infer-codec.js';

/** The infer route's parsed body. */
export interface InferBody {
  header: WireInferRequest;
  binary: Buffer;
}

const INFLATE: Record<string, (buf: Buffer, options: zlib.ZlibOptions) => Promise<Buffer>> = {
  gzip: promisify(zlib.gunzip),
  'x-gzip': promisify(zlib.gunzip),
  deflate: promisify(zlib.inflate),
};

/** Undoes Content-Encoding; the inflated body is held to the same limit as the raw one. */
export async function decodeContentEncoding(
  request: FastifyRequest, raw: Buffer, limitBytes: number,
): Promise<Buffer> {
  const encoding = request.headers['content-encoding']?.trim().toLowerCase();
  if (encoding === undefined || encoding === '' || encoding === 'identity') return raw;
  const inflate = INFLATE[encoding];
  if (inflate === undefined) {
    throw new SdserveError('SDS_ERR_UNSUPPORTED', `Content-Encoding ${quoted(encoding, "'")} is not supported (use gzip or deflate)`);
  }
  try {
    return await inflate(raw, { maxOutputLength: limitBytes });
  } catch (err) {
    if ((err as { code?: string }).code === 'ERR_BUFFER_TOO_LARGE') {
      throw new errorCodes.FST_ERR_CTP_BODY_TOO_LARGE();
    }
    throw invalidArg(`could not inflate the ${quoted(encoding, '')} request body: ${(err as Error).message}`);
  }
}

/** Parses JSON text, naming what it was in the 400 message; its shape is bounded (request-shape.ts). */
export function parseJson(text: Buffer | string, what: string): unknown {
  checkJsonText(typeof text === 'string' ? Buffer.from(text, 'utf8') : text, what);
  try {
    return JSON.parse(typeof text === 'string' ? text : text.toString('utf8'));
  } catch (err) {
    throw invalidArg(`malformed JSON in ${what}: ${(err as Error).message}`);
  }
}

/** JSON's own whitespace (RFC 8259 §2); String.prototype.trim also strips form feeds and more. */
const JSON_WHITESPACE = /^[ \t\n\r]*$/;

/** A JSON body that may be empty or whitespace (then `{}`), for the non-infer routes. */
export async function parseOptionalJsonBody(
  request: FastifyRequest, raw: Buffer, limitBytes: number,
): Promise<unknown> {
  const body = await decodeContentEncoding(request, raw, limitBytes);
  const text = body.toString('utf8');
  if (JSON_WHITESPACE.test(text)) return {};
  return parseJson(text, 'request body');
}

/**
 * Route preValidation hook: fastify skips the parser for a request with no body at all, so
 * give optional-body routes `{}` to validate.
 */
export async function emptyBodyAsObject(request: FastifyRequest): Promise<void> {
  if (request.body === undefined) request.body = {};
}

/** Route preValidation hook for the infer route, whose body is required. */
export async function requireInferBody(request: FastifyRequest): Promise<void> {
  if (request.body === undefined) throw invalidArg('the inference request body is empty');
}

/** The infer body: JSON header plus binary tensor data (absent header length: all JSON). */
export async function parseInferBody(
  request: FastifyRequest, raw: Buffer, limitBytes: number,
): Promise<InferBody> {
  const body = await decodeContentEncoding(request, raw, limitBytes);
  const headerLength = parseHeaderLength(request.headers['inference-header-content-length'], body.length);
  const { header, binary } = splitInferBody(body, headerLength);
  return { header: parseJson(header, 'inference request header') as WireInferRequest, binary };
}
