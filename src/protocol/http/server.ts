/**
 * The KServe v2 HTTP/REST front end, plus OpenAI-style image routes under /v1 and the web
 * playground at /playground: thin routes over the one InferenceCore. Errors are mapped to
 * statuses in error-reply.ts only; bodies are validated by schemas compiled at registration.
 */
import Fastify, { type FastifyInstance, type FastifyRequest, type FastifyServerOptions } from 'fastify';
import type { InferenceCore } from '../../core/inference-core.js';
import { parseOptionalJsonBody } from './body-parsers.js';
import { formatSchemaError, sendError, sendNotFound } from './error-reply.js';
import { registerGenerateRoutes } from './generate-route.js';
import { registerHealthRoutes } from './health-routes.js';
import { inferRoutes } from './infer-route.js';
import { registerModelRoutes } from './model-routes.js';
import { openAiRoutes } from './openai-routes.js';
import { recordRoutes, registerOpenApiRoute } from './openapi.js';
import { registerPlaygroundRoute } from './playground-route.js';
import { registerRepositoryRoutes } from './repository-routes.js';

export interface HttpServerOptions {
  /** fastify's `logger` option (pino options, or true/false). Default: false. */
  logger?: boolean | object;
  /** Largest request body, raw or inflated. Default: 64 MiB (fastify's own default is 1 MiB). */
  bodyLimitBytes?: number;
}

export const DEFAULT_BODY_LIMIT_BYTES = 64 * 1024 * 1024;

/** Builds (does not start) the HTTP server; call `.listen()` on the result. */
export function buildHttpServer(core: InferenceCore, options: HttpServerOptions = {}): FastifyInstance {
  const bodyLimitBytes = options.bodyLimitBytes ?? DEFAULT_BODY_LIMIT_BYTES;
  const app = Fastify({
    logger: (options.logger ?? false) as FastifyServerOptions['logger'],
    bodyLimit: bodyLimitBytes,
    routerOptions: { maxParamLength: 1024 },
    schemaErrorFormatter: formatSchemaError,
    // Strict bodies: no type coercion; `$parameters` values are string | number | boolean.
    ajv: { customOptions: { coerceTypes: false, allowUnionTypes: true } },
  });
  app.setErrorHandler(sendError);
  app.setNotFoundHandler(sendNotFound);
  // Infer bodies are JSON + binary, every other body optional JSON; any or no Content-Type.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' },
    async (request: FastifyRequest, raw: Buffer) => parseOptionalJsonBody(request, raw, bodyLimitBytes));
  recordRoutes(app);
  registerHealthRoutes(app, core);
  registerModelRoutes(app, core);
  registerRepositoryRoutes(app, core);
  registerGenerateRoutes(app, core);
  registerPlaygroundRoute(app);
  registerOpenApiRoute(app);
  app.register(inferRoutes, { core, bodyLimitBytes });
  app.register(openAiRoutes, { core, prefix: '/v1' });
  return app;
}
