/**
 * Per-model reads, each at `/v2/models/:model` and `/v2/models/:model/versions/:version`:
 * metadata, readiness (200, 400, or 503 while draining; empty body), configuration (Triton's JSON form) and
 * statistics (Triton's statistics extension; `/v2/models/stats` for every model).
 */
import type { FastifyInstance } from 'fastify';
import type { InferenceCore } from '../../core/inference-core.js';
import { readinessStatus } from './health-routes.js';

export interface ModelParams {
  model: string;
  version?: string;
}

/** The two URL forms of a model: any ready version, or one version. */
export const MODEL_PATHS = ['/v2/models/:model', '/v2/models/:model/versions/:version'] as const;

/** Registers metadata, ready, config and stats routes in both URL forms. */
export function registerModelRoutes(app: FastifyInstance, core: InferenceCore): void {
  app.get('/v2/models/stats', async () => ({ model_stats: core.statistics() }));
  for (const base of MODEL_PATHS) {
    app.get<{ Params: ModelParams }>(base, async (request) => (
      core.modelMetadata(request.params.model, request.params.version)
    ));
    app.get<{ Params: ModelParams }>(`${base}/ready`, async (request, reply) => {
      const ready = core.isModelReady(request.params.model, request.params.version);
      return reply.code(readinessStatus(core, ready)).send();
    });
    app.get<{ Params: ModelParams }>(`${base}/config`, async (request) => (
      core.modelConfig(request.params.model, request.params.version)
    ));
    app.get<{ Params: ModelParams }>(`${base}/stats`, async (request) => (
      { model_stats: core.statistics(request.params.model, request.params.version) }
    ));
  }
}
