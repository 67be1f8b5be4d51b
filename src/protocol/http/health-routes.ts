/** Server health and metadata: `GET /v2/health/live`, `GET /v2/health/ready`, `GET /v2`. */
import type { FastifyInstance } from 'fastify';
import type { InferenceCore } from '../../core/inference-core.js';

/** Health answers 200 or 400 with an empty body, as Triton does. */
export function registerHealthRoutes(app: FastifyInstance, core: InferenceCore): void {
  app.get('/v2/health/live', async (_request, reply) => reply.code(core.isLive() ? 200 : 400).send());
  app.get('/v2/health/ready', async (_request, reply) => reply.code(core.isReady() ? 200 : 400).send());
  app.get('/v2', async () => core.serverMetadata());
}
