/**
 * `POST /v2/models/:model[/versions/:version]/infer`, JSON or binary (Triton's binary tensor
 * data extension). Bodies are taken as bytes whatever their Content-Type; this route's context
 * has its own parser for that (see body-parsers.ts).
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { InferenceCore } from '../../core/inference-core.js';
import { refuseDecoupled } from '../decoupled-models.js';
import { disconnectSignal } from './disconnect-signal.js';
import { parseInferBody, requireInferBody, type InferBody } from './body-parsers.js';
import { decodeInferRequest, encodeInferResponse } from './infer-codec.js';
import { MODEL_PATHS, type ModelParams } from './model-routes.js';
import type { MediaTypeConfig } from './request-guard.js';
import { sendInferResponse } from './response-encoding.js';
import { inferBodySchema } from './schemas.js';

/** Fastify plugin (own context, own body parser) registering the infer route in both URL forms. */
export async function inferRoutes(
  app: FastifyInstance, options: { core: InferenceCore; bodyLimitBytes: number },
): Promise<void> {
  const { core, bodyLimitBytes } = options;
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' },
    async (request: FastifyRequest, raw: Buffer) => parseInferBody(request, raw, bodyLimitBytes));
  for (const base of MODEL_PATHS) {
    app.post<{ Params: ModelParams; Body: InferBody }>(
      `${base}/infer`,
      {
        schema: { body: inferBodySchema },
        preValidation: requireInferBody,
        config: { acceptMediaTypes: ['application/octet-stream'] } satisfies MediaTypeConfig,
      },
      async (request, reply) => {
        // 1. decode  2. infer  3. encode  4. send
        const { model, version } = request.params;
        const decoded = decodeInferRequest(request.body.header, request.body.binary, model, version);
        refuseDecoupled(core, 'HTTP end point', model, version);
        const response = await core.infer(decoded.request, disconnectSignal(reply));
        const encoded = encodeInferResponse(response, decoded.format, decoded.request.id);
        return sendInferResponse(request, reply, encoded);
      },
    );
  }
}
