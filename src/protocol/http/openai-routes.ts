/**
 * OpenAI-style images API over the same core, for clients written against OpenAI's SDKs:
 * `POST /v1/images/generations` (`prompt`, `model`, `n`, `size` "WxH", `response_format`
 * "b64_json", `output_format` png | jpeg | webp, `output_compression` 0-100, plus sdserve's
 * `negative_prompt`, `steps`, `seed`, `guidance_scale`, `scheduler`, `loras`) answers
 * `{created, output_format, data: [{b64_json}]}`; `POST /v1/images/edits` (multipart: `image`,
 * optional `mask`, `prompt`, `n`, `size`, ...) answers the same way: image-to-image, or
 * inpainting where the mask (else the image itself) is transparent, as OpenAI's edits read a
 * mask; `GET /v1/models` lists the ready text-to-image models. Errors take OpenAI's shape
 * (error-reply.ts).
 */
import multipart from '@fastify/multipart';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { InferenceCore } from '../../core/inference-core.js';
import { closestName } from '../../core/did-you-mean.js';
import type { Parameters } from '../../core/types.js';
import { invalidArg, quoted, SdserveError } from '../../errors.js';
import {
  chooseImageModel, generateImages, OUTPUT_FORMATS, readyImageModels, type GeneratedImages, type ImageRequest,
  type OutputFormat,
} from '../generation/index.js';
import { disconnectSignal } from './disconnect-signal.js';
import { sendOpenAiError, sendOpenAiNotFound } from './error-reply.js';

/** OpenAI's own limit on `n`; a model's max_batch_size may allow fewer. */
const MAX_IMAGES = 10;
/** OpenAI's limit on one uploaded image file. */
const MAX_UPLOAD_BYTES = 50 * 1024 * 1024;

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
  loras?: Array<{ name: string; scale?: number }>;
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
    // sdserve's: LoRAs of the model's loras/ folder for this request (the backend checks names and scales).
    loras: {
      type: 'array',
      items: { type: 'object', required: ['name'], properties: { name: { type: 'string', minLength: 1 }, scale: { type: 'number' } } },
    },
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
    // A few names say it; a hundred long ones would only make the message as large as the body.
    const named = unknown.slice(0, 5).map((key) => quoted(key)).join(', ') + (unknown.length > 5 ? ` and ${unknown.length - 5} more` : '');
    throw invalidArg(`unsupported field${unknown.length > 1 ? 's' : ''} ${named}`
      + `${meant.length > 0 ? ` (did you mean ${[...new Set(meant)].slice(0, 5).map((name) => `"${name}"`).join(', ')}?)` : ''}; `
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
  // Request parameters are scalars: the list travels as its JSON text, as v2 clients send it.
  if (body.loras !== undefined) parameters.loras = JSON.stringify(body.loras);
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
 * JSON bodies, but for images.edit()'s multipart one; without this check other multipart
 * uploads (images.create_variation()) would hear of a JSON syntax error instead of what is supported.
 */
async function requireJsonBody(request: FastifyRequest): Promise<void> {
  const type = request.headers['content-type']?.split(';')[0].trim().toLowerCase();
  if (type === undefined || type === 'application/json' || type.endsWith('+json')) return;
  const path = request.url.split('?')[0];
  if (type === 'multipart/form-data' && path === '/v1/images/edits') return;
  throw invalidArg(`${request.method} ${quoted(path, '')}: the body must be JSON (Content-Type: application/json)`
    + `${path === '/v1/images/edits' ? ' or multipart/form-data' : ''}, got ${quoted(type, '')}; sdserve's OpenAI-style API supports `
    + 'POST /v1/images/generations (JSON) and /v1/images/edits (multipart): images.create_variation() is not supported');
}

/** The text fields of `POST /v1/images/edits` sdserve acts on (the files are `image` and `mask`). */
const EDIT_FIELDS = ['prompt', 'model', 'n', 'size', 'response_format', 'output_format', 'output_compression', 'user',
  'negative_prompt', 'steps', 'seed', 'guidance_scale', 'scheduler', 'strength'] as const;
const EDIT_NUMBERS = new Set(['n', 'output_compression', 'steps', 'seed', 'guidance_scale', 'strength']);

interface EditForm {
  fields: Record<string, string | number>;
  images: Buffer[];
  masks: Buffer[];
}

/** The multipart form of images.edit(): `image` (or `image[]`) files, an optional `mask`, text fields. */
async function readEditForm(request: FastifyRequest): Promise<EditForm> {
  if (!request.isMultipart()) throw invalidArg('POST /v1/images/edits: the body must be multipart/form-data');
  const form: EditForm = { fields: {}, images: [], masks: [] };
  try {
    await readParts(request, form);
  } catch (error) {
    // The parser's own errors (no boundary, a broken part) are the client's; its limits keep their 413.
    const status = (error as { statusCode?: unknown }).statusCode;
    if (error instanceof SdserveError || (typeof status === 'number' && status < 500)) throw error;
    throw invalidArg(`images/edits: malformed multipart/form-data body: ${(error as Error).message}`);
  }
  return form;
}

async function readParts(request: FastifyRequest, form: EditForm): Promise<void> {
  for await (const part of request.parts()) {
    const name = part.fieldname.replace(/\[\]$/, '');
    if (part.type !== 'file' && (name === 'image' || name === 'mask')) {
      throw invalidArg(`images/edits: "${name}" must be a file part (a PNG, JPEG or WebP file), got a text field`);
    }
    if (part.type === 'file') {
      if (name !== 'image' && name !== 'mask') throw invalidArg(`images/edits: unexpected file field ${quoted(part.fieldname)}; files are "image" and "mask"`);
      (name === 'image' ? form.images : form.masks).push(await part.toBuffer());
      continue;
    }
    if (!(EDIT_FIELDS as readonly string[]).includes(name)) {
      const meant = closestName(name, [...EDIT_FIELDS, 'image', 'mask']);
      throw invalidArg(`images/edits: unsupported field ${quoted(name)}${meant ? ` (did you mean "${meant}"?)` : ''}; `
        + `supported: image, mask, ${EDIT_FIELDS.join(', ')}`);
    }
    const text = String(part.value);
    const number = Number(text);
    if (EDIT_NUMBERS.has(name) && (text.trim() === '' || !Number.isFinite(number))) {
      throw invalidArg(`images/edits: "${name}" must be a number, got ${quoted(text)}`);
    }
    form.fields[name] = EDIT_NUMBERS.has(name) ? number : text;
  }
}

/** An edit in the generation module's terms: images/generations' fields plus the files. */
function toEditRequest(form: EditForm): ImageRequest {
  const { fields } = form;
  if (typeof fields.prompt !== 'string' || fields.prompt === '') throw invalidArg('images/edits: "prompt" is required');
  if (form.images.length === 0) throw invalidArg('images/edits: "image" (a PNG, JPEG or WebP file) is required');
  if (form.masks.length > 1) throw invalidArg('images/edits: send at most one "mask"');
  const n = fields.n ?? 1;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > MAX_IMAGES) {
    throw invalidArg(`images/edits: "n" must be an integer from 1 to ${MAX_IMAGES}, got ${String(n)}`);
  }
  if (fields.size !== undefined && !/^(auto|[1-9][0-9]*x[1-9][0-9]*)$/.test(String(fields.size))) {
    throw invalidArg(`images/edits: "size" must be "WIDTHxHEIGHT" or "auto", got ${quoted(fields.size)}`);
  }
  if (fields.response_format !== undefined && !['b64_json', 'url'].includes(String(fields.response_format))) {
    throw invalidArg(`images/edits: "response_format" must be "b64_json", got ${quoted(fields.response_format)}`);
  }
  if (fields.prompt.length === 0) throw invalidArg('images/edits: "prompt" must not be empty');
  if (fields.output_format !== undefined && !(OUTPUT_FORMATS as readonly unknown[]).includes(fields.output_format)) {
    throw invalidArg(`images/edits: "output_format" must be one of ${OUTPUT_FORMATS.join(', ')}`);
  }
  const request = toImageRequest({ ...fields, n } as unknown as ImagesBody);
  // OpenAI's masks mark what to edit by transparency; without one, the image's own transparency.
  request.parameters.mask_from_alpha = true;
  if (fields.strength !== undefined) request.parameters.strength = fields.strength;
  if (form.images.length > 1 && form.images.length !== n) {
    throw invalidArg(`images/edits: send one "image", or one per image (n = ${n}), got ${form.images.length}`);
  }
  return { ...request, images: form.images, ...(form.masks.length > 0 && { masks: form.masks }) };
}

/** Fastify plugin, registered under the prefix /v1 (own context: OpenAI's error shape). */
export async function openAiRoutes(app: FastifyInstance, options: { core: InferenceCore }): Promise<void> {
  const { core } = options;
  const started = Math.floor(Date.now() / 1000);
  app.setErrorHandler(sendOpenAiError);
  app.setNotFoundHandler(sendOpenAiNotFound);
  app.addHook('onRequest', requireJsonBody);
  await app.register(multipart, { limits: { fileSize: MAX_UPLOAD_BYTES, files: MAX_IMAGES + 1, fields: 32, parts: 48 } });

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
      return imagesReply(generated);
    });

  app.post('/images/edits', { config: { acceptMediaTypes: ['multipart/form-data'] } }, async (request, reply) => {
    const form = await readEditForm(request);
    const edit = toEditRequest(form);
    if (form.fields.response_format === 'url') {
      throw invalidArg('response_format "url" is not supported: images come back inline; use "b64_json"');
    }
    const model = chooseImageModel(core, typeof form.fields.model === 'string' ? form.fields.model : undefined);
    return imagesReply(await generateImages(core, model, edit, disconnectSignal(reply)));
  });
}

function imagesReply(generated: GeneratedImages): Record<string, unknown> {
  return {
    created: Math.floor(Date.now() / 1000),
    output_format: generated.format,
    data: generated.images.map((file) => ({ b64_json: file.toString('base64') })),
  };
}
