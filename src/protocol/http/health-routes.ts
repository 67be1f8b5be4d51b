/** Server health and metadata: `GET /v2/health/live`, `GET /v2/health/ready`, `GET /v2`. */
import type { FastifyInstance } from 'fastify';
import type { InferenceCore } from '../../core/inference-core.js';

/**
 * Health answers 200 or 400 with an empty body, as Triton does; readiness answers 503 while the
 * server drains before exit, the status load balancers and probes take for "send elsewhere".
 */
export function registerHealthRoutes(app: FastifyInstance, core: InferenceCore): void {
  app.get('/v2/health/live', async (_request, reply) => reply.code(core.isLive() ? 200 : 400).send());
  app.get('/v2/health/ready', async (_request, reply) => reply.code(readinessStatus(core, core.isReady())).send());
  app.get('/v2', async () => core.serverMetadata());
}

/** 200 when ready; 503 while draining; else Triton's 400. */
export function readinessStatus(core: InferenceCore, ready: boolean): number {
  if (ready) return 200;
  return core.isShuttingDown() ? 503 : 400;
}
