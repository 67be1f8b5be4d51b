/**
 * Triton's model repository extension: `POST /v2/repository/index`,
 * `POST /v2/repository/models/:model/load`, `POST /v2/repository/models/:model/unload`.
 */
import type { FastifyInstance } from 'fastify';
import type { InferenceCore } from '../../core/inference-core.js';
import { quoted, SdserveError } from '../../errors.js';
import { emptyBodyAsObject } from './body-parsers.js';
import { loadModelSchema, repositoryIndexSchema, unloadModelSchema } from './schemas.js';

interface LoadBody {
  parameters?: Record<string, unknown> & { config?: string };
}

/** Load parameters `file:<path>` carry model files inline; sdserve loads only from the repository. */
function rejectFileOverrides(parameters: Record<string, unknown>): void {
  const file = Object.keys(parameters).find((key) => key.startsWith('file:'));
  if (file !== undefined) {
    throw new SdserveError('SDS_ERR_UNSUPPORTED', `load parameter ${quoted(file, "'")}: model file overrides are not supported`);
  }
}

/** Registers index, load and unload; bodies are optional JSON. */
export function registerRepositoryRoutes(app: FastifyInstance, core: InferenceCore): void {
  app.post<{ Body: { ready?: boolean } }>(
    '/v2/repository/index',
    { schema: { body: repositoryIndexSchema }, preValidation: emptyBodyAsObject },
    async (request) => core.repositoryIndex(request.body.ready ?? false),
  );
  app.post<{ Params: { model: string }; Body: LoadBody }>(
    '/v2/repository/models/:model/load',
    { schema: { body: loadModelSchema }, preValidation: emptyBodyAsObject },
    async (request, reply) => {
      const parameters = request.body.parameters ?? {};
      rejectFileOverrides(parameters);
      await core.loadModel(request.params.model, parameters.config);
      return reply.code(200).send();
    },
  );
  app.post<{ Params: { model: string } }>(
    '/v2/repository/models/:model/unload',
    { schema: { body: unloadModelSchema }, preValidation: emptyBodyAsObject },
    async (request, reply) => {
      await core.unloadModel(request.params.model);
      return reply.code(200).send();
    },
  );
}
