/**
 * Automatic1111's web UI API, for the tools written against it: `POST /sdapi/v1/txt2img` and
 * `/sdapi/v1/img2img` (`init_images`, `mask`, `denoising_strength`, `mask_blur`) answer
 * `{images: [base64 PNG], parameters, info}`, and `GET /sdapi/v1/sd-models` (the models and
 * their refiners) and `/sdapi/v1/samplers` list what may be asked for. A thin mapping onto the
 * generation module; A1111 fields that would change the image but sdserve does not implement
 * (hires fix, face restoration, variation seeds, scripts) are errors, not ignored.
 * `refiner_checkpoint` and `refiner_switch_at` drive the refiner the model's backend declares;
 * without a checkpoint the base runs every step, as in A1111.
 */
import { randomInt } from 'node:crypto';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { closestName } from '../../core/did-you-mean.js';
import type { InferenceCore } from '../../core/inference-core.js';
import type { Parameters, ParameterValue } from '../../core/types.js';
import { invalidArg, quoted } from '../../errors.js';
import {
  chooseImageModel, decodeBase64Image, generateImages, readyImageModels, type ImageModel, type ImageRequest,
} from '../generation/index.js';
import { disconnectSignal } from './disconnect-signal.js';

/** A1111's sampler names and the schedulers of sdserve's backend they are. */
const SAMPLERS: Record<string, string> = {
  'Euler a': 'euler_a',
  Euler: 'euler',
  LMS: 'lms',
  Heun: 'heun',
  'DPM++ 2M': 'dpm++',
  'DPM++ 2M Karras': 'dpm++_2m_karras',
  'DPM++ 2M SDE': 'dpm++_2m_sde',
  'DPM++ 2M SDE Karras': 'dpm++_2m_sde_karras',
  'DPM++ SDE': 'dpm++_sde',
  'DPM++ SDE Karras': 'dpm++_sde_karras',
  DPM2: 'dpm2',
  'DPM2 Karras': 'dpm2_karras',
  'DPM2 a': 'dpm2_a',
  'DPM2 a Karras': 'dpm2_a_karras',
  LCM: 'lcm',
  DDIM: 'ddim',
  DDPM: 'ddpm',
  PLMS: 'pndm',
  UniPC: 'unipc',
};

type Route = 'txt2img' | 'img2img';

/** A1111 seeds are 32-bit; -1 asks for a random one. */
const MAX_SEED = 2 ** 32 - 1;

interface Txt2ImgBody {
  prompt?: string;
  negative_prompt?: string;
  seed?: number;
  sampler_name?: string | null;
  sampler_index?: string | null;
  scheduler?: string | null;
  batch_size?: number;
  n_iter?: number;
  steps?: number;
  cfg_scale?: number;
  width?: number;
  height?: number;
  send_images?: boolean;
  override_settings?: { sd_model_checkpoint?: string } & Record<string, unknown>;
  enable_hr?: boolean;
  refiner_checkpoint?: string | null;
  refiner_switch_at?: number | null;
  [field: string]: unknown;
}

const nullable = (type: string) => ({ type: [type, 'null'] });

export const txt2imgBodySchema = {
  type: 'object',
  properties: {
    prompt: { type: 'string' },
    negative_prompt: { type: 'string' },
    seed: { type: 'integer', minimum: -1, maximum: MAX_SEED },
    sampler_name: nullable('string'),
    sampler_index: nullable('string'),
    scheduler: nullable('string'),
    batch_size: { type: 'integer', minimum: 1 },
    n_iter: { type: 'integer', minimum: 1, maximum: 100 },
    steps: { type: 'integer', minimum: 1 },
    cfg_scale: { type: 'number', minimum: 0 },
    width: { type: 'integer', minimum: 8 },
    height: { type: 'integer', minimum: 8 },
    send_images: { type: 'boolean' },
    override_settings: nullable('object'),
    enable_hr: nullable('boolean'),
    refiner_checkpoint: {
      ...nullable('string'),
      description: "The model's refiner (its config parameter `refiner`), by name or A1111 title "
        + '("name", "name.safetensors", "name.safetensors [hash]", as /sdapi/v1/sd-models titles it); '
        + 'empty, null or "None": no refiner, the model runs every step (as A1111 does). Text-to-image only.',
    },
    refiner_switch_at: {
      ...nullable('number'), minimum: 0, maximum: 1,
      description: 'With refiner_checkpoint: the fraction of the steps after which the refiner takes over, in (0, 1] '
        + "(the request's high_noise_fraction; 1: the base alone; null: the model's default). Ignored without one, as in A1111.",
    },
  },
} as const;

/** img2img: txt2img's fields and the input image, the mask and how they are used. */
export const img2imgBodySchema = {
  type: 'object',
  required: ['init_images'],
  properties: {
    ...txt2imgBodySchema.properties,
    init_images: { type: 'array', items: { type: 'string' }, minItems: 1 },
    mask: nullable('string'),
    denoising_strength: { type: 'number', exclusiveMinimum: 0, maximum: 1 },
    mask_blur: { type: 'integer', minimum: 0, maximum: 64 },
    // A1111's inpainting fills: 1 ("original") is what sdserve does; the others are refused.
    inpainting_fill: { enum: [1, null] },
    inpainting_mask_invert: { enum: [0, false, null] },
    inpaint_full_res: { enum: [false, 0, null] },
    resize_mode: { enum: [0, null] },
  },
} as const;

interface Img2ImgBody extends Txt2ImgBody {
  init_images: string[];
  mask?: string | null;
  denoising_strength?: number;
  mask_blur?: number;
}

/** A1111's defaults for img2img. */
const A1111_DENOISING_STRENGTH = 0.75;
const A1111_MASK_BLUR = 4;

const MAPPED_FIELDS = Object.keys(txt2imgBodySchema.properties);
const IMG2IMG_MAPPED_FIELDS = Object.keys(img2imgBodySchema.properties);

/**
 * A1111 fields sdserve does not act on, with the values that leave the image as sdserve makes
 * it (A1111's defaults). Clients send them with every request, so those values are accepted.
 */
const NEUTRAL_FIELDS: Record<string, (value: unknown) => boolean> = {
  styles: (v) => v === null || (Array.isArray(v) && v.length === 0),
  subseed: (v) => v === null || v === -1 || typeof v === 'number',
  subseed_strength: (v) => v === null || v === 0,
  seed_resize_from_h: (v) => v === null || v === -1 || v === 0,
  seed_resize_from_w: (v) => v === null || v === -1 || v === 0,
  restore_faces: (v) => v === null || v === false,
  tiling: (v) => v === null || v === false,
  do_not_save_samples: (v) => v === null || typeof v === 'boolean',
  do_not_save_grid: (v) => v === null || typeof v === 'boolean',
  save_images: (v) => v === null || v === false,
  eta: (v) => v === null || v === 0,
  s_min_uncond: (v) => v === null || v === 0,
  s_churn: (v) => v === null || v === 0,
  s_tmax: (v) => v === null || v === 0,
  s_tmin: (v) => v === null || v === 0,
  s_noise: (v) => v === null || v === 1,
  override_settings_restore_afterwards: (v) => v === null || typeof v === 'boolean',
  disable_extra_networks: (v) => v === null || typeof v === 'boolean',
  comments: (v) => v === null || (typeof v === 'object' && Object.keys(v as object).length === 0),
  script_name: (v) => v === null || v === '',
  script_args: (v) => v === null || (Array.isArray(v) && v.length === 0),
  alwayson_scripts: (v) => v === null || (typeof v === 'object' && Object.keys(v as object).length === 0),
  force_task_id: (v) => v === null || typeof v === 'string',
  infotext: (v) => v === null || v === '',
  user: () => true,
  // img2img's, at the values that leave sdserve's image as it is.
  inpaint_full_res_padding: (v) => v === null || typeof v === 'number',
  include_init_images: (v) => v === null || typeof v === 'boolean',
  initial_noise_multiplier: (v) => v === null || v === 1,
  image_cfg_scale: (v) => v === null || typeof v === 'number',
  mask_round: (v) => v === null || typeof v === 'boolean',
};

/** The hires-fix fields mean something only with `enable_hr: true`, which sdserve refuses. */
const HIRES_FIELD = /^(hr_|firstphase_|denoising_strength$)/;

/** Unknown fields, and known ones set to what sdserve cannot do, are the client's to hear of. */
function fieldChecker(route: Route) {
  const mapped = route === 'txt2img' ? MAPPED_FIELDS : IMG2IMG_MAPPED_FIELDS;
  const known = [...mapped, ...Object.keys(NEUTRAL_FIELDS)];
  return async (request: FastifyRequest): Promise<void> => {
    const body = request.body;
    if (typeof body !== 'object' || body === null || Array.isArray(body)) return;  // the schema's to report
    for (const [field, value] of Object.entries(body)) {
      if (mapped.includes(field) || HIRES_FIELD.test(field)) continue;
      const neutral = NEUTRAL_FIELDS[field];
      if (neutral === undefined) {
        const meant = closestName(field, known);
        throw invalidArg(`${route}: unknown field ${quoted(field)}${meant ? ` (did you mean "${meant}"?)` : ''}; `
          + `sdserve acts on ${mapped.join(', ')}`);
      }
      if (!neutral(value)) {
        throw invalidArg(`${route}: "${field}": ${quoted(value)} is not supported by sdserve; leave it at A1111's default`);
      }
    }
    if ((body as Txt2ImgBody).enable_hr === true) throw invalidArg(`${route}: "enable_hr" (hires fix) is not supported by sdserve`);
  };
}

/** `sampler_name` (or the older `sampler_index`) as a scheduler of the model. */
function schedulerOf(body: Txt2ImgBody): string | undefined {
  const sampler = body.sampler_name ?? body.sampler_index;
  if (body.scheduler && !/^automatic$/i.test(body.scheduler)) {
    throw invalidArg(`txt2img: scheduler ${quoted(body.scheduler)} is not supported by sdserve; use "Automatic"`);
  }
  if (sampler === undefined || sampler === null || sampler === '') return undefined;
  const scheduler = SAMPLERS[sampler];
  if (scheduler === undefined) {
    const meant = closestName(sampler, Object.keys(SAMPLERS));
    throw invalidArg(`txt2img: unknown sampler ${quoted(sampler)}${meant ? ` (did you mean "${meant}"?)` : ''}; `
      + `samplers: ${Object.keys(SAMPLERS).join(', ')}`);
  }
  return scheduler;
}

/** A declared default of the model, for the reply's `parameters` and `info`. */
function declaredDefault(model: ImageModel, name: string): ParameterValue | undefined {
  const value = model.capabilities?.parameters[name]?.default;
  return value === null ? undefined : value;
}

/** `refiner_checkpoint` values that ask for no refiner ("None" is A1111's own list entry for none). */
const NO_REFINER_CHECKPOINTS = ['', 'None', 'none'];

/**
 * The model name in an A1111 checkpoint title: "name.safetensors [hash]", "name.safetensors" or
 * "name". sdserve's models have no hash (sd-models lists none), so the bracket is not compared.
 */
function checkpointName(title: string): string {
  return title.trim().replace(/\s*\[[0-9a-fA-F]+\]$/, '').replace(/\.(safetensors|ckpt)$/i, '');
}

/** The generation contract's "no refiner": a high-noise fraction of 1 leaves every step to the base. */
const BASE_ALONE = 1;

/**
 * The request's `high_noise_fraction` from A1111's refiner fields, or undefined for none.
 * `refiner_checkpoint` must name the refiner the model's backend declares (capabilities
 * `refiner`), and `refiner_switch_at` (A1111: the fraction of the steps after which the refiner
 * takes over) is the fraction; without it, the model's default. Without a checkpoint A1111 runs no
 * refiner and ignores the switch; so does this mapping: a model that declares `high_noise_fraction`
 * (it has a refiner) is asked for the base alone, whatever its config's default.
 */
function highNoiseFraction(route: Route, model: ImageModel, body: Txt2ImgBody): number | undefined {
  const checkpoint = body.refiner_checkpoint ?? '';
  if (NO_REFINER_CHECKPOINTS.includes(checkpoint.trim())) {
    // img2img runs no refiner, and the parameter there is a 400.
    const declared = model.capabilities?.parameters.high_noise_fraction !== undefined;
    return route === 'txt2img' && declared ? BASE_ALONE : undefined;
  }
  const field = `${route}: "refiner_checkpoint" ${quoted(checkpoint)}`;
  if (route === 'img2img') throw invalidArg(`${field}: sdserve runs a refiner after text-to-image only; leave it empty for img2img`);
  const refiner = model.capabilities?.refiner;
  if (refiner === undefined) {
    throw invalidArg(`${field}: model '${model.name}' has no refiner (its config parameter "refiner" names none); leave it empty`);
  }
  if (checkpointName(checkpoint) !== refiner) {
    throw invalidArg(`${field} is not the refiner of model '${model.name}': its refiner is '${refiner}'`);
  }
  const switchAt = body.refiner_switch_at ?? undefined;
  if (switchAt === 0) {
    throw invalidArg(`${route}: "refiner_switch_at" 0 leaves every step to the refiner, which sdserve runs only after the base: `
      + 'give the fraction of the steps after which the refiner takes over, in (0, 1] (1: the base alone)');
  }
  return switchAt;
}

/** The refiner and its switch as the infotext reports them, when the refiner finishes the request's images. */
function refinerRun(route: Route, model: ImageModel, fraction: number | undefined): { name: string; switchAt: number } | undefined {
  const name = model.capabilities?.refiner;
  const switchAt = fraction ?? declaredDefault(model, 'high_noise_fraction');
  if (route !== 'txt2img' || name === undefined || typeof switchAt !== 'number' || switchAt >= 1) return undefined;
  return { name, switchAt };
}

/** The settings one txt2img or img2img request runs with, its seed drawn when it asked for a random one. */
function settingsOf(model: ImageModel, body: Txt2ImgBody, route: Route) {
  const scheduler = schedulerOf(body);
  const samplerName = Object.entries(SAMPLERS).find(([, name]) => name === (scheduler ?? declaredDefault(model, 'scheduler')))?.[0];
  const fraction = highNoiseFraction(route, model, body);
  // Checked before any list of batch_size prompts is made: a huge one is a 400, not a failed allocation.
  if (body.batch_size !== undefined && body.batch_size > model.maxImages) {
    throw invalidArg(`"batch_size" ${body.batch_size}: model '${model.name}' makes 1 to ${model.maxImages} image(s) per request`);
  }
  return {
    prompt: body.prompt ?? '',
    negativePrompt: body.negative_prompt ?? '',
    seed: body.seed === undefined || body.seed === -1 ? randomInt(0, MAX_SEED) : body.seed,
    batchSize: body.batch_size ?? 1,
    nIter: body.n_iter ?? 1,
    scheduler,
    samplerName: samplerName ?? 'Automatic',
    steps: body.steps ?? declaredDefault(model, 'steps'),
    cfgScale: body.cfg_scale ?? declaredDefault(model, 'guidance_scale'),
    width: body.width ?? declaredDefault(model, 'width'),
    height: body.height ?? declaredDefault(model, 'height'),
    highNoiseFraction: fraction,
    refiner: refinerRun(route, model, fraction),
  };
}

type Settings = ReturnType<typeof settingsOf>;

/** img2img's input image, mask and strength, as base64 files and parameters. */
function img2imgInputs(body: Img2ImgBody): Pick<ImageRequest, 'images' | 'masks'> & { parameters: Parameters } {
  const images = body.init_images.map((image, index) => decodeBase64Image(`init_images[${index}]`, image));
  const parameters: Parameters = { strength: body.denoising_strength ?? A1111_DENOISING_STRENGTH };
  if (body.mask === undefined || body.mask === null || body.mask === '') return { images, parameters };
  parameters.mask_blur = body.mask_blur ?? A1111_MASK_BLUR;
  return { images, masks: [decodeBase64Image('mask', body.mask)], parameters };
}

/** Iteration `i` of `n_iter`: A1111 moves the seed on by the batch size each time. */
function imageRequest(settings: Settings, body: Txt2ImgBody, iteration: number): ImageRequest {
  const parameters: Parameters = { seed: settings.seed + iteration * settings.batchSize };
  if (settings.scheduler !== undefined) parameters.scheduler = settings.scheduler;
  if (body.steps !== undefined) parameters.steps = body.steps;
  if (body.cfg_scale !== undefined) parameters.guidance_scale = body.cfg_scale;
  if (body.width !== undefined) parameters.width = body.width;
  if (body.height !== undefined) parameters.height = body.height;
  if (settings.highNoiseFraction !== undefined) parameters.high_noise_fraction = settings.highNoiseFraction;
  return {
    prompts: Array<string>(settings.batchSize).fill(settings.prompt),
    ...(settings.negativePrompt !== '' && { negativePrompts: [settings.negativePrompt] }),
    parameters,
    outputFormat: 'png',
  };
}

/** A1111's "infotext": the prompt, the negative prompt, then `Key: value` settings, one per image. */
function infotext(settings: Settings, model: ImageModel, seed: number): string {
  const lines = [settings.prompt];
  if (settings.negativePrompt !== '') lines.push(`Negative prompt: ${settings.negativePrompt}`);
  const fields: Array<[string, unknown]> = [
    ['Steps', settings.steps], ['Sampler', settings.samplerName], ['CFG scale', settings.cfgScale], ['Seed', seed],
    ['Size', settings.width !== undefined && settings.height !== undefined ? `${settings.width}x${settings.height}` : undefined],
    ['Model', model.name],
    ['Refiner', settings.refiner?.name], ['Refiner switch at', settings.refiner?.switchAt],
  ];
  lines.push(fields.filter(([, value]) => value !== undefined).map(([key, value]) => `${key}: ${String(value)}`).join(', '));
  return lines.join('\n');
}

/**
 * What A1111 lists as checkpoints: the ready text-to-image models and the refiner each declares
 * (loaded by its base, served on its own or not), each once, by name. A1111 clients choose
 * `refiner_checkpoint` from this list, and `checkpointName` takes each title back.
 */
function checkpointNames(core: InferenceCore): string[] {
  const models = readyImageModels(core);
  const refiners = models.map((model) => model.capabilities?.refiner).filter((name) => name !== undefined);
  return [...new Set([...models.map((model) => model.name), ...refiners])].sort();
}

/** Fastify plugin, registered under the prefix /sdapi/v1. */
export async function a1111Routes(app: FastifyInstance, options: { core: InferenceCore }): Promise<void> {
  const { core } = options;

  app.get('/sd-models', async () => checkpointNames(core).map((name) => ({
    title: name, model_name: name, hash: null, sha256: null, filename: name, config: null,
  })));

  app.get('/samplers', async () => Object.keys(SAMPLERS).map((name) => ({ name, aliases: [], options: {} })));

  app.post<{ Body: Txt2ImgBody }>('/txt2img', { schema: { body: txt2imgBodySchema }, preValidation: fieldChecker('txt2img') },
    async (request, reply) => generate(core, request.body, disconnectSignal(reply)));

  app.post<{ Body: Img2ImgBody }>('/img2img', { schema: { body: img2imgBodySchema }, preValidation: fieldChecker('img2img') },
    async (request, reply) => generate(core, request.body, disconnectSignal(reply), img2imgInputs(request.body)));
}

/** One txt2img or img2img request (with `inputs`): 1. each iteration in turn  2. A1111's reply. */
async function generate(
  core: InferenceCore, body: Txt2ImgBody, signal: AbortSignal,
  inputs?: Pick<ImageRequest, 'images' | 'masks'> & { parameters: Parameters },
): Promise<Record<string, unknown>> {
  const model = chooseImageModel(core, body.override_settings?.sd_model_checkpoint ?? undefined);
  const settings = settingsOf(model, body, inputs === undefined ? 'txt2img' : 'img2img');
  // 1. one request per iteration, in turn, as A1111 runs them
  const images: Buffer[] = [];
  const seeds: number[] = [];
  for (let iteration = 0; iteration < settings.nIter; iteration += 1) {
    const request = imageRequest(settings, body, iteration);
    const withInputs = inputs === undefined ? request
      : { ...request, images: inputs.images, masks: inputs.masks, parameters: { ...request.parameters, ...inputs.parameters } };
    const generated = await generateImages(core, model, withInputs, signal);
    images.push(...generated.images);
    seeds.push(...generated.images.map(() => settings.seed + iteration * settings.batchSize));
  }
  // 2. the reply: images, the request as run, and what each image came from
  const count = images.length;
  const info = {
    prompt: settings.prompt, all_prompts: Array<string>(count).fill(settings.prompt),
    negative_prompt: settings.negativePrompt, all_negative_prompts: Array<string>(count).fill(settings.negativePrompt),
    seed: settings.seed, all_seeds: seeds, subseed: -1, all_subseeds: Array<number>(count).fill(-1), subseed_strength: 0,
    width: settings.width, height: settings.height, sampler_name: settings.samplerName, cfg_scale: settings.cfgScale,
    steps: settings.steps, batch_size: settings.batchSize, restore_faces: false, sd_model_name: model.name,
    index_of_first_image: 0, infotexts: seeds.map((seed) => infotext(settings, model, seed)),
    styles: [], job_timestamp: new Date().toISOString(),
    extra_generation_params: settings.refiner === undefined ? {}
      : { Refiner: settings.refiner.name, 'Refiner switch at': settings.refiner.switchAt },
    ...(inputs !== undefined && { denoising_strength: inputs.parameters.strength }),
  };
  const { init_images: _images, mask: _mask, ...echoed } = body as Partial<Img2ImgBody>;
  return {
    images: body.send_images === false ? [] : images.map((file) => file.toString('base64')),
    parameters: {
      ...echoed, prompt: settings.prompt, negative_prompt: settings.negativePrompt, seed: settings.seed,
      sampler_name: settings.samplerName, batch_size: settings.batchSize, n_iter: settings.nIter,
      steps: settings.steps, cfg_scale: settings.cfgScale, width: settings.width, height: settings.height,
      ...(inputs !== undefined && { init_images: null, mask: null, denoising_strength: inputs.parameters.strength }),
    },
    info: JSON.stringify(info),
  };
}
