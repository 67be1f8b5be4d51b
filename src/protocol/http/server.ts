/**
 * The KServe v2 HTTP/REST front end, plus OpenAI-style image routes under /v1 and the web
 * playground at /playground: thin routes over the one InferenceCore. Errors are mapped to
 * statuses in error-reply.ts only; bodies are validated by schemas compiled at registration.
 */
import cors from '@fastify/cors';
import Fastify, { type FastifyInstance, type FastifyRequest, type FastifyServerOptions } from 'fastify';
import type { InferenceCore } from '../../core/inference-core.js';
import { OPEN_POLICY, type AccessPolicy } from '../access-policy.js';
import { closeSilentConnections } from '../silent-connections.js';
import { parseOptionalJsonBody } from './body-parsers.js';
import { formatSchemaError, sendError, sendNotFound } from './error-reply.js';
import { a1111Routes } from './a1111-routes.js';
import { registerGenerateRoutes } from './generate-route.js';
import { registerHealthRoutes } from './health-routes.js';
import { inferRoutes } from './infer-route.js';
import { registerModelRoutes } from './model-routes.js';
import { openAiRoutes } from './openai-routes.js';
import { recordRoutes, registerOpenApiRoute } from './openapi.js';
import { registerPlaygroundRoute } from './playground-route.js';
import { registerRepositoryRoutes } from './repository-routes.js';
import { requestGuard } from './request-guard.js';

export interface HttpServerOptions {
  /** fastify's `logger` option (pino options, or true/false). Default: false. */
  logger?: boolean | object;
  /** Largest request body, raw or inflated. Default: 64 MiB (fastify's own default is 1 MiB). */
  bodyLimitBytes?: number;
  /** API key and restricted API groups. Default: open. */
  access?: AccessPolicy;
  /** Origins whose web pages may call the API (CORS). Default: none. */
  corsOrigins?: readonly string[];
  /** PEM certificate and key: serve HTTPS. */
  tls?: { cert: Buffer; key: Buffer };
  limits?: HttpLimits;
}

/** Connection limits, so idle or slow clients cannot hold every file descriptor. */
export interface HttpLimits {
  /** Largest request body (`--http-max-input-size`); overrides `bodyLimitBytes`. */
  maxInputBytes?: number;
  /** Open connections beyond this are closed on accept. */
  maxConnections?: number;
  /** Time a client has to send its request headers. */
  headersTimeoutMs?: number;
  /** Time an idle keep-alive connection stays open between requests. */
  keepAliveTimeoutMs?: number;
  /** Time a client has to send a whole request (headers and body). */
  requestTimeoutMs?: number;
}

export const DEFAULT_BODY_LIMIT_BYTES = 64 * 1024 * 1024;
export const DEFAULT_HTTP_LIMITS = {
  maxConnections: 1024,
  headersTimeoutMs: 30_000,
  // Longer than the usual 60 s of load balancers, as fastify's default, so they close first.
  keepAliveTimeoutMs: 72_000,
  requestTimeoutMs: 300_000,
} as const;

/** Builds (does not start) the HTTP server; call `.listen()` on the result. */
export function buildHttpServer(core: InferenceCore, options: HttpServerOptions = {}): FastifyInstance {
  const bodyLimitBytes = options.limits?.maxInputBytes ?? options.bodyLimitBytes ?? DEFAULT_BODY_LIMIT_BYTES;
  const limits = { ...DEFAULT_HTTP_LIMITS, ...options.limits };
  const common: FastifyServerOptions = {
    logger: (options.logger ?? false) as FastifyServerOptions['logger'],
    bodyLimit: bodyLimitBytes,
    routerOptions: { maxParamLength: 1024 },
    schemaErrorFormatter: formatSchemaError,
    // Strict bodies: no type coercion; `$parameters` values are string | number | boolean.
    ajv: { customOptions: { coerceTypes: false, allowUnionTypes: true } },
    keepAliveTimeout: limits.keepAliveTimeoutMs,
    requestTimeout: limits.requestTimeoutMs,
  };
  // Node sweeps for timed-out connections every connectionsCheckingInterval (30 s by default).
  const timeouts = {
    headersTimeout: limits.headersTimeoutMs,
    requestTimeout: limits.requestTimeoutMs,
    connectionsCheckingInterval: Math.min(30_000, Math.max(100, Math.floor(limits.headersTimeoutMs / 2))),
  };
  // An HTTPS fastify instance has the same API; only its server type differs.
  const app = (options.tls === undefined
    ? Fastify({ ...common, http: timeouts })
    : Fastify({ ...common, https: { ...timeouts, ...options.tls } } as FastifyServerOptions)) as unknown as FastifyInstance;
  app.server.maxConnections = limits.maxConnections;
  closeSilentConnections(app.server, limits.headersTimeoutMs, options.tls !== undefined);
  app.setErrorHandler(sendError);
  app.setNotFoundHandler(sendNotFound);
  const corsOrigins = options.corsOrigins ?? [];
  if (corsOrigins.length > 0) {
    app.register(cors, { origin: [...corsOrigins], allowedHeaders: ['authorization', 'content-type', 'content-encoding', 'inference-header-content-length'], maxAge: 600 });
  }
  app.addHook('onRequest', requestGuard({ policy: options.access ?? OPEN_POLICY, corsOrigins }));
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
  app.register(a1111Routes, { core, prefix: '/sdapi/v1' });
  return app;
}
