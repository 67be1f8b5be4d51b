/**
 * OpenAI-style images API over the same core, for clients written against OpenAI's SDKs:
 * `POST /v1/images/generations` (`prompt`, `model`, `n`, `size` "WxH", `response_format`
 * "b64_json", plus sdserve's `negative_prompt`, `steps`, `seed`, `guidance_scale`, `scheduler`)
 * answers `{created, data: [{b64_json}]}` with PNG images; `GET /v1/models` lists the ready
 * text-to-image models. Errors take OpenAI's shape (error-reply.ts).
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { InferenceCore } from '../../core/inference-core.js';
import type { InferResponse, ModelMetadata, Parameters } from '../../core/types.js';
import { invalidArg, SdserveError } from '../../errors.js';
import { encodePngImages, isImageBatch } from '../image-encoding.js';
import { disconnectSignal } from './disconnect-signal.js';
import { sendOpenAiError, sendOpenAiNotFound } from './error-reply.js';
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

/** The body of `POST /v1/images/generations` (also in the OpenAPI document). */
export const imagesBodySchema = {
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
    // Larger integers do not survive JSON numbers exactly: the image would come from another seed.
    seed: { type: 'integer', minimum: 0, maximum: Number.MAX_SAFE_INTEGER },
    guidance_scale: { type: 'number' },
    scheduler: { type: 'string' },
  },
} as const;
const IMAGES_FIELDS = Object.keys(imagesBodySchema.properties);

/**
 * OpenAI fields sdserve does not implement (quality, style, ...) are errors. Checked here because
 * fastify's validator would drop them silently (`additionalProperties: false` + removeAdditional).
 */
async function rejectUnknownFields(request: FastifyRequest): Promise<void> {
  const body = request.body;
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return;  // the schema's to report
  const unknown = Object.keys(body).filter((key) => !IMAGES_FIELDS.includes(key));
  if (unknown.length > 0) {
    throw invalidArg(`unsupported field${unknown.length > 1 ? 's' : ''} ${unknown.map((key) => `"${key}"`).join(', ')}; `
      + `supported: ${IMAGES_FIELDS.join(', ')}`);
  }
}

function hasTextInput(metadata: ModelMetadata, name: string): boolean {
  return metadata.inputs.some((input) => input.name === name && input.datatype === 'BYTES');
}

/** A prompt in, a batch of images ([B, H, W, C] UINT8) out. */
function isTextToImage(core: InferenceCore, model: string): boolean {
  const metadata = core.modelMetadata(model);
  return hasTextInput(metadata, PROMPT_INPUT)
    && metadata.outputs.some((output) => output.datatype === 'UINT8' && output.shape.length === 4);
}

function readyTextToImageModels(core: InferenceCore): string[] {
  const names = new Set(core.repositoryIndex(true).map((status) => status.name));
  return [...names].filter((name) => isTextToImage(core, name)).sort();
}

/** The model a request names, or the only ready text-to-image model when it names none. */
function chooseModel(core: InferenceCore, model: string | undefined): string {
  if (model !== undefined) {
    if (!isTextToImage(core, model)) {
      throw invalidArg(`model '${model}' is not a text-to-image model (a BYTES input "${PROMPT_INPUT}", an image output)`);
    }
    return model;
  }
  const ready = readyTextToImageModels(core);
  if (ready.length === 0) throw new SdserveError('SDS_ERR_MODEL_NOT_READY', 'no text-to-image model is ready');
  if (ready.length > 1) throw invalidArg(`"model" is required: ready text-to-image models are ${ready.join(', ')}`);
  return ready[0]!;
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

/** The request as a body of Triton's generate extension: `n` copies of each text. */
function toGenerateBody(core: InferenceCore, model: string, body: ImagesBody): Record<string, unknown> {
  const copies = (text: string) => Array<string>(body.n ?? 1).fill(text);
  const generateBody: Record<string, unknown> = { [PROMPT_INPUT]: copies(body.prompt), parameters: requestParameters(body) };
  if (body.negative_prompt !== undefined) {
    if (!hasTextInput(core.modelMetadata(model), NEGATIVE_PROMPT_INPUT)) {
      throw invalidArg(`model '${model}' has no BYTES input "${NEGATIVE_PROMPT_INPUT}"`);
    }
    generateBody[NEGATIVE_PROMPT_INPUT] = copies(body.negative_prompt);
  }
  return generateBody;
}

function toImagesResponse(response: InferResponse): Record<string, unknown> {
  const images = response.outputs.find(isImageBatch);
  if (images === undefined) {
    throw new SdserveError('SDS_ERR_BACKEND', `model '${response.model_name}' returned no [B, H, W, 3|4] UINT8 images`);
  }
  return {
    created: Math.floor(Date.now() / 1000),
    data: encodePngImages(images).map((png) => ({ b64_json: png.toString('base64') })),
  };
}

/** Fastify plugin, registered under the prefix /v1 (own context: OpenAI's error shape). */
export async function openAiRoutes(app: FastifyInstance, options: { core: InferenceCore }): Promise<void> {
  const { core } = options;
  const started = Math.floor(Date.now() / 1000);
  app.setErrorHandler(sendOpenAiError);
  app.setNotFoundHandler(sendOpenAiNotFound);

  app.get('/models', async () => ({
    object: 'list',
    data: readyTextToImageModels(core).map((id) => ({ id, object: 'model', created: started, owned_by: 'sdserve' })),
  }));

  app.post<{ Body: ImagesBody }>('/images/generations',
    { schema: { body: imagesBodySchema }, preValidation: rejectUnknownFields },
    async (request, reply) => {
      const body = request.body;
      if (body.response_format === 'url') {
        throw invalidArg('response_format "url" is not supported: images come back inline; use "b64_json"');
      }
      const model = chooseModel(core, body.model);
      const inferRequest = generateInferRequest(core, { model }, toGenerateBody(core, model, body));
      return toImagesResponse(await core.infer(inferRequest, disconnectSignal(reply)));
    });
}
