/**
 * OpenAI-style images API over the same core, for clients written against OpenAI's SDKs:
 * `POST /v1/images/generations` (`prompt`, `model`, `n`, `size` "WxH", `response_format`
 * "b64_json", plus sdserve's `negative_prompt`, `steps`, `seed`, `guidance_scale`, `scheduler`)
 * answers `{created, data: [{b64_json}]}` with PNG images; `GET /v1/models` lists the ready
 * text-to-image models. Errors take OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { InferenceCore } from '../../core/inference-core.js';
import type { Parameters } from '../../core/types.js';
import { invalidArg, toSdserveError } from '../../errors.js';
import { encodePngImages, isImageBatch } from '../image-encoding.js';
import { disconnectSignal } from './disconnect-signal.js';
import { httpStatusOf } from './error-reply.js';
import { generateInferRequest } from './generate-route.js';

const PROMPT_INPUT = 'prompt';
const NEGATIVE_PROMPT_INPUT = 'negative_prompt';
/** OpenAI's own limit on `n`; a model's max_batch_size may allow fewer. */
const MAX_IMAGES = 10;

interface ImagesBody {
  prompt: string;
  model?: string;
  n?: number;
  size?: string;
  response_format?: 'b64_json' | 'url';
  user?: string;
  negative_prompt?: string;
  steps?: number;
  seed?: number;
  guidance_scale?: number;
  scheduler?: string;
}

const imagesBodySchema = {
  type: 'object',
  required: ['prompt'],
  properties: {
    prompt: { type: 'string', minLength: 1 },
    model: { type: 'string', minLength: 1 },
    n: { type: 'integer', minimum: 1, maximum: MAX_IMAGES },
    size: { type: 'string', pattern: '^(auto|[1-9][0-9]*x[1-9][0-9]*)$' },
    response_format: { enum: ['b64_json', 'url'] },
    user: { type: 'string' },
    negative_prompt: { type: 'string' },
    steps: { type: 'integer', minimum: 1 },
    seed: { type: 'integer', minimum: 0 },
    guidance_scale: { type: 'number' },
    scheduler: { type: 'string' },
  },
} as const;

function hasTextInput(core: InferenceCore, model: string, name: string): boolean {
  return core.modelMetadata(model).inputs.some((input) => input.name === name && input.datatype === 'BYTES');
}

function isTextToImage(core: InferenceCore, model: string): boolean {
  return hasTextInput(core, model, PROMPT_INPUT);
}

function readyTextToImageModels(core: InferenceCore): string[] {
  const names = new Set(core.repositoryIndex(true).map((status) => status.name));
  return [...names].filter((name) => isTextToImage(core, name)).sort();
}

/** The model a request names, or the only ready text-to-image model when it names none. */
function chooseModel(core: InferenceCore, model: string | undefined): string {
  if (model !== undefined) return model;
  const ready = readyTextToImageModels(core);
  if (ready.length === 1) return ready[0]!;
  throw invalidArg(`"model" is required: ${ready.length === 0 ? 'no text-to-image model is ready'
    : `ready text-to-image models are ${ready.join(', ')}`}`);
}

function requestParameters(body: ImagesBody): Parameters {
  const parameters: Parameters = {};
  if (body.size !== undefined && body.size !== 'auto') {
    const [width, height] = body.size.split('x').map(Number);
    parameters.width = width!;
    parameters.height = height!;
  }
  for (const key of ['steps', 'seed', 'guidance_scale', 'scheduler'] as const) {
    if (body[key] !== undefined) parameters[key] = body[key]!;
  }
  return parameters;
}

function sendOpenAiError(err: unknown, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  const status = httpStatusOf(err);
  if (status >= 500) request.log.error({ err }, 'request failed');
  const message = toSdserveError(err).message;
  const type = status >= 500 ? 'server_error' : status === 404 ? 'not_found_error' : 'invalid_request_error';
  return reply.code(status).type('application/json').send({ error: { message, type, param: null, code: null } });
}

const IMAGES_FIELDS = Object.keys(imagesBodySchema.properties);

/** OpenAI fields sdserve does not implement (quality, style, ...) are errors, not silently dropped. */
async function rejectUnknownFields(request: FastifyRequest): Promise<void> {
  const body = request.body;
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return;  // the schema's to report
  const unknown = Object.keys(body).filter((key) => !IMAGES_FIELDS.includes(key));
  if (unknown.length > 0) {
    throw invalidArg(`unsupported field${unknown.length > 1 ? 's' : ''} ${unknown.map((key) => `"${key}"`).join(', ')}; `
      + `supported: ${IMAGES_FIELDS.join(', ')}`);
  }
}

/** Fastify plugin (own context: OpenAI's error shape) registering the /v1 routes. */
export async function openAiRoutes(app: FastifyInstance, options: { core: InferenceCore }): Promise<void> {
  const { core } = options;
  const started = Math.floor(Date.now() / 1000);
  app.setErrorHandler(sendOpenAiError);

  app.get('/v1/models', async () => ({
    object: 'list',
    data: readyTextToImageModels(core).map((id) => ({ id, object: 'model', created: started, owned_by: 'sdserve' })),
  }));

  app.post<{ Body: ImagesBody }>('/v1/images/generations',
    { schema: { body: imagesBodySchema }, preValidation: rejectUnknownFields },
    async (request, reply) => {
      // 1. check what sdserve cannot do  2. the generate extension's request  3. infer  4. PNGs
      const body = request.body;
      if (body.response_format === 'url') {
        throw invalidArg('response_format "url" is not supported: images come back inline; use "b64_json"');
      }
      const model = chooseModel(core, body.model);
      if (!isTextToImage(core, model)) throw invalidArg(`model '${model}' has no BYTES input "${PROMPT_INPUT}"`);
      const n = body.n ?? 1;
      const generateBody: Record<string, unknown> = {
        [PROMPT_INPUT]: Array<string>(n).fill(body.prompt),
        parameters: requestParameters(body),
      };
      if (body.negative_prompt !== undefined) {
        if (!hasTextInput(core, model, NEGATIVE_PROMPT_INPUT)) {
          throw invalidArg(`model '${model}' has no BYTES input "${NEGATIVE_PROMPT_INPUT}"`);
        }
        generateBody[NEGATIVE_PROMPT_INPUT] = Array<string>(n).fill(body.negative_prompt);
      }
      const response = await core.infer(generateInferRequest(core, { model }, generateBody), disconnectSignal(reply));
      const images = response.outputs.find(isImageBatch);
      if (images === undefined) throw toSdserveError(new Error(`model '${model}' returned no image output`));
      return {
        created: Math.floor(Date.now() / 1000),
        data: encodePngImages(images).map((png) => ({ b64_json: png.toString('base64') })),
      };
    });
}
