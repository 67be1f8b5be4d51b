/**
 * OpenAI-style images API over the same core, for clients written against OpenAI's SDKs:
 * `POST /v1/images/generations` (`prompt`, `model`, `n`, `size` "WxH", `response_format`
 * "b64_json", `output_format` png | jpeg | webp, `output_compression` 0-100, plus sdserve's
 * `negative_prompt`, `steps`, `seed`, `guidance_scale`, `scheduler`) answers
 * `{created, output_format, data: [{b64_json}]}`; `GET /v1/models` lists the ready
 * text-to-image models. Errors take OpenAI's shape (error-reply.ts).
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { InferenceCore } from '../../core/inference-core.js';
import { closestName } from '../../core/did-you-mean.js';
import type { Parameters } from '../../core/types.js';
import { invalidArg } from '../../errors.js';
import {
  chooseImageModel, generateImages, OUTPUT_FORMATS, readyImageModels, type ImageRequest, type OutputFormat,
} from '../generation/index.js';
import { disconnectSignal } from './disconnect-signal.js';
import { sendOpenAiError, sendOpenAiNotFound } from './error-reply.js';

/** OpenAI's own limit on `n`; a model's max_batch_size may allow fewer. */
const MAX_IMAGES = 10;

interface ImagesBody {
  prompt: string;
  model?: string;
  n?: number;
  size?: string;
  response_format?: 'b64_json' | 'url';
  output_format?: OutputFormat;
  output_compression?: number;
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
    output_format: { enum: [...OUTPUT_FORMATS] },
    output_compression: { type: 'integer', minimum: 0, maximum: 100 },
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
    const meant = unknown.map((key) => closestName(key, IMAGES_FIELDS)).filter((name) => name !== undefined);
    throw invalidArg(`unsupported field${unknown.length > 1 ? 's' : ''} ${unknown.map((key) => `"${key}"`).join(', ')}`
      + `${meant.length > 0 ? ` (did you mean ${meant.map((name) => `"${name}"`).join(', ')}?)` : ''}; `
      + `supported: ${IMAGES_FIELDS.join(', ')}`);
  }
}

/** OpenAI's fields in the generation module's terms: `n` copies of the prompt, `size` as width and height. */
function toImageRequest(body: ImagesBody): ImageRequest {
  const parameters: Parameters = {};
  if (body.size !== undefined && body.size !== 'auto') {
    const [width, height] = body.size.split('x').map(Number);
    parameters.width = width!;
    parameters.height = height!;
  }
  for (const key of ['steps', 'seed', 'guidance_scale', 'scheduler'] as const) {
    if (body[key] !== undefined) parameters[key] = body[key]!;
  }
  const copies = (text: string) => Array<string>(body.n ?? 1).fill(text);
  return {
    prompts: copies(body.prompt),
    ...(body.negative_prompt !== undefined && { negativePrompts: [body.negative_prompt] }),
    parameters,
    ...(body.output_format !== undefined && { outputFormat: body.output_format }),
    ...(body.output_compression !== undefined && { outputCompression: body.output_compression }),
  };
}

/**
 * OpenAI's SDKs send multipart bodies for images.edit() and create_variation(); without this
 * they would hear of a JSON syntax error instead of what is supported.
 */
async function requireJsonBody(request: FastifyRequest): Promise<void> {
  const type = request.headers['content-type']?.split(';')[0].trim().toLowerCase();
  if (type === undefined || type === 'application/json' || type.endsWith('+json')) return;
  throw invalidArg(`${request.method} ${request.url.split('?')[0]}: the body must be JSON (Content-Type: application/json), `
    + `got ${type}; sdserve's OpenAI-style API supports POST /v1/images/generations only: `
    + 'images.edit() and images.create_variation() (multipart uploads) are not supported');
}

/** Fastify plugin, registered under the prefix /v1 (own context: OpenAI's error shape). */
export async function openAiRoutes(app: FastifyInstance, options: { core: InferenceCore }): Promise<void> {
  const { core } = options;
  const started = Math.floor(Date.now() / 1000);
  app.setErrorHandler(sendOpenAiError);
  app.setNotFoundHandler(sendOpenAiNotFound);
  app.addHook('onRequest', requireJsonBody);

  app.get('/models', async () => ({
    object: 'list',
    data: readyImageModels(core).map(({ name: id }) => ({ id, object: 'model', created: started, owned_by: 'sdserve' })),
  }));

  app.post<{ Body: ImagesBody }>('/images/generations',
    { schema: { body: imagesBodySchema }, preValidation: rejectUnknownFields },
    async (request, reply) => {
      const body = request.body;
      if (body.response_format === 'url') {
        throw invalidArg('response_format "url" is not supported: images come back inline; use "b64_json"');
      }
      const model = chooseImageModel(core, body.model);
      const generated = await generateImages(core, model, toImageRequest(body), disconnectSignal(reply));
      return {
        created: Math.floor(Date.now() / 1000),
        output_format: generated.format,
        data: generated.images.map((file) => ({ b64_json: file.toString('base64') })),
      };
    });
}
