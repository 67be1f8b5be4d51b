/**
 * Sends an encoded inference response: Content-Type and `Inference-Header-Content-Length` per
 * Triton's binary tensor data extension, compressed when the client's Accept-Encoding asks for
 * gzip or deflate (fast level, and only for bodies large enough to gain from it).
 */
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { EncodedInferResponse } from './infer-codec.js';

const MIN_COMPRESS_BYTES = 1024;
const OPTIONS: zlib.ZlibOptions = { level: zlib.constants.Z_BEST_SPEED };
const COMPRESS: Record<string, (buf: Buffer, options: zlib.ZlibOptions) => Promise<Buffer>> = {
  gzip: promisify(zlib.gzip),
  deflate: promisify(zlib.deflate),
};

/** The first of gzip, deflate that `accept` allows (a `q=0` entry refuses it). */
export function pickResponseEncoding(accept: string | undefined): 'gzip' | 'deflate' | undefined {
  if (accept === undefined) return undefined;
  const allowed = new Set<string>();
  for (const entry of accept.toLowerCase().split(',')) {
    const [coding = '', ...params] = entry.split(';').map((part) => part.trim());
    const refused = params.some((p) => /^q=0(\.0*)?$/.test(p));
    if (!refused) allowed.add(coding);
  }
  if (allowed.has('gzip')) return 'gzip';
  if (allowed.has('deflate')) return 'deflate';
  return undefined;
}

/** Sends `encoded` with the extension's headers, compressed when the client accepts it. */
export async function sendInferResponse(
  request: FastifyRequest, reply: FastifyReply, encoded: EncodedInferResponse,
): Promise<FastifyReply> {
  const binary = encoded.headerLength !== undefined;
  reply.type(binary ? 'application/octet-stream' : 'application/json');
  if (binary) reply.header('Inference-Header-Content-Length', encoded.headerLength);
  const encoding = pickResponseEncoding(request.headers['accept-encoding']);
  if (encoding === undefined || encoded.body.length < MIN_COMPRESS_BYTES) return reply.send(encoded.body);
  const body = await COMPRESS[encoding](encoded.body, OPTIONS);
  return reply.header('Content-Encoding', encoding).send(body);
}
