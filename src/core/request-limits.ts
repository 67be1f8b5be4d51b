import type { CapabilitiesMeta } from '../backend/messages.js';
import { quoted, SdserveError } from '../errors.js';
import { makesImages } from './image-model.js';
import type { ModelConfig } from '../repository/model-config-types.js';
import type { InferRequest, ParameterValue } from './types.js';
import { requestIdTag } from './validate-request.js';

/**
 * What one request may cost, from the model's config.pbtxt `parameters` (0: no limit). Checked
 * in the core before any backend work, so every front end (KServe HTTP and gRPC, the OpenAI
 * routes, the web page) is bounded alike.
 */
export interface RequestLimits {
  /** `max_image_pixels`: height × width of one image. */
  maxImagePixels: number;
  /** `max_request_cost`: images × height × width × steps of one request. */
  maxRequestCost: number;
  /** `max_prompt_chars`: characters of one element of a text (BYTES) input, e.g. a prompt. */
  maxPromptChars: number;
}

/**
 * The defaults of a model that declares it makes images: SDXL's 1024² and its 2:1 buckets pass, and so do four of
 * them at 100 steps; a 4096² image or 1,000 steps at 1024² do not. A prompt of 4,000 characters
 * is far beyond what CLIP's 77 tokens keep.
 */
export const IMAGE_REQUEST_LIMITS: RequestLimits = {
  maxImagePixels: 2 * 1024 * 1024,
  maxRequestCost: 4 * 1024 * 1024 * 100,
  maxPromptChars: 4000,
};

/** Other models get only the limits their config sets. */
const NO_LIMITS: RequestLimits = { maxImagePixels: 0, maxRequestCost: 0, maxPromptChars: 0 };

const LIMIT_PARAMETERS: Record<keyof RequestLimits, string> = {
  maxImagePixels: 'max_image_pixels',
  maxRequestCost: 'max_request_cost',
  maxPromptChars: 'max_prompt_chars',
};

/** An image model's usual defaults when neither request nor config gives them. */
const DEFAULT_STEPS = 30;
/** The largest native size of the built-in model families (SDXL), so the estimate never undercounts. */
const DEFAULT_IMAGE_SIDE = 1024;

const parsed = new WeakMap<ModelConfig, { image?: RequestLimits; other?: RequestLimits }>();

/**
 * The limits of `config`, its parameters over the defaults of what its backend declared
 * (`capabilities`: image limits for a model that makes images). Throws SDS_ERR_CONFIG naming a
 * parameter that is not a non-negative integer (the model's load reports it).
 */
export function requestLimits(config: ModelConfig, capabilities?: CapabilitiesMeta): RequestLimits {
  const kind = makesImages(capabilities) ? 'image' : 'other';
  const cached = parsed.get(config) ?? {};
  parsed.set(config, cached);
  const known = cached[kind];
  if (known !== undefined) return known;
  const limits = { ...(kind === 'image' ? IMAGE_REQUEST_LIMITS : NO_LIMITS) };
  for (const key of Object.keys(LIMIT_PARAMETERS) as Array<keyof RequestLimits>) {
    const name = LIMIT_PARAMETERS[key];
    const text = config.parameters[name]?.string_value.trim() ?? '';
    if (text === '') continue;
    if (!/^\d+$/.test(text) || !Number.isSafeInteger(Number(text))) {
      throw new SdserveError('SDS_ERR_CONFIG', `config parameter '${name}' must be a non-negative integer (0: no limit), got ${quoted(text)}`);
    }
    limits[key] = Number(text);
  }
  cached[kind] = limits;
  return limits;
}

/**
 * Refuses a request over its model's limits with SDS_ERR_INVALID_ARG naming the limit, the
 * value found and the config parameter that sets it. Cheap: a huge prompt is refused from its
 * length prefix, without being decoded.
 */
export function checkRequestLimits(request: InferRequest, config: ModelConfig, capabilities?: CapabilitiesMeta): void {
  const limits = requestLimits(config, capabilities);
  const refuse = (message: string) => new SdserveError('SDS_ERR_INVALID_ARG',
    `${requestIdTag(request)} ${message} for model '${config.name}'`);
  // 1. text inputs
  if (limits.maxPromptChars > 0) {
    for (const tensor of request.inputs) {
      if (tensor.datatype !== 'BYTES') continue;
      // Files sent for a pixel input (an `image` as PNG) are not text; their backend checks them.
      const declared = config.input.find((input) => input.name === tensor.name);
      if (declared !== undefined && declared.data_type !== 'TYPE_STRING') continue;
      const longest = longestElement(tensor.data, limits.maxPromptChars);
      if (longest !== undefined) {
        throw refuse(`input ${quoted(tensor.name, "'")} has an element of ${longest} characters, over the limit of `
          + `${limits.maxPromptChars} (config parameter max_prompt_chars)`);
      }
    }
  }
  if (limits.maxImagePixels === 0 && limits.maxRequestCost === 0) return;
  // 2. image size
  const height = numberParameter(request.parameters.height) ?? configNumber(config, 'image_height') ?? DEFAULT_IMAGE_SIDE;
  const width = numberParameter(request.parameters.width) ?? configNumber(config, 'image_width') ?? DEFAULT_IMAGE_SIDE;
  const pixels = height * width;
  if (limits.maxImagePixels > 0 && pixels > limits.maxImagePixels) {
    throw refuse(`an image of ${width}x${height} has ${pixels} pixels, over the limit of ${limits.maxImagePixels} `
      + '(config parameter max_image_pixels)');
  }
  // 3. the whole request: every image at every step
  const steps = numberParameter(request.parameters.steps) ?? configNumber(config, 'steps') ?? DEFAULT_STEPS;
  const images = imageCount(request, config);
  const cost = images * pixels * steps;
  if (limits.maxRequestCost > 0 && cost > limits.maxRequestCost) {
    throw refuse(`a request of ${images} image(s) x ${pixels} pixels x ${steps} steps costs ${cost}, over the limit of `
      + `${limits.maxRequestCost} (config parameter max_request_cost)`);
  }
}

/**
 * The length in characters of the first element of a BYTES tensor (4-byte little-endian length,
 * then UTF-8) longer than `maxChars`, else undefined. An element of more than 4 bytes per allowed
 * character is over the limit whatever it holds, and is reported by its byte length unread.
 */
function longestElement(data: Buffer, maxChars: number): number | undefined {
  for (let offset = 0; offset + 4 <= data.length;) {
    const length = data.readUInt32LE(offset);
    const start = offset + 4;
    offset = start + length;
    if (length <= maxChars) continue;
    if (length > 4 * maxChars) return length;
    const chars = [...data.toString('utf8', start, Math.min(offset, data.length))].length;
    if (chars > maxChars) return chars;
  }
  return undefined;
}

/** Batch models carry one image per batch entry; others one per request. */
function imageCount(request: InferRequest, config: ModelConfig): number {
  if (config.max_batch_size <= 0) return 1;
  return Math.max(1, ...request.inputs.map((tensor) => tensor.shape[0] ?? 1));
}

/** A request parameter as a positive number, else undefined (the backend reports bad values). */
function numberParameter(value: ParameterValue | undefined): number | undefined {
  if (typeof value === 'boolean' || value === undefined) return undefined;
  const n = typeof value === 'number' ? value : Number(value.trim());
  return Number.isFinite(n) && n > 0 && String(value).trim() !== '' ? n : undefined;
}

function configNumber(config: ModelConfig, name: string): number | undefined {
  return numberParameter(config.parameters[name]?.string_value);
}
