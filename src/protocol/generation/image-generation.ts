/**
 * The one mapping between typed image-generation requests and the core's InferRequest, shared by
 * every front end that speaks in prompts and images (v2 generate, OpenAI, Automatic1111): which
 * inputs carry the prompts, which output carries the images, and whether the backend encodes
 * them (its declared `encoded_output`) or the PNG pool does.
 */
import type { CapabilitiesMeta, ParameterSpec } from '../../backend/messages.js';
import type { InferenceCore } from '../../core/inference-core.js';
import type { InferRequest, InferResponse, ModelMetadata, Parameters, Tensor, TensorMetadata } from '../../core/types.js';
import { invalidArg, quoted, SdserveError } from '../../errors.js';
import { joinBytesElements, splitBytesElements } from '../binary-tensor.js';
import { encodePngImages, isImageBatch } from './png-pool.js';

export const PROMPT_INPUT = 'prompt';
export const NEGATIVE_PROMPT_INPUT = 'negative_prompt';
/** Image-to-image and inpainting: the input image and the mask (white = repaint), as files. */
export const IMAGE_INPUT = 'image';
export const MASK_INPUT = 'mask';
export const OUTPUT_FORMATS = ['png', 'jpeg', 'webp'] as const;
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];
export const MIME_TYPES: Record<OutputFormat, string> = { png: 'image/png', jpeg: 'image/jpeg', webp: 'image/webp' };

/** What a text-to-image model takes and gives, read from the core once per request. */
export interface ImageModel {
  name: string;
  version?: string;
  /** Its BYTES `negative_prompt` input, if it has one. */
  hasNegativePrompt: boolean;
  /** Whether its inputs carry a batch dimension (max_batch_size > 0). */
  batched: boolean;
  /** The UINT8 [B, H, W, 3|4] output. */
  imageOutput: string;
  /** The BYTES [B, 1] output of encoded files, when the backend encodes. */
  encodedOutput?: string;
  /** Images one request may ask for. */
  maxImages: number;
  /** Whether it takes input images (and masks) as BYTES files: image-to-image, inpainting. */
  takesImageFiles: boolean;
  capabilities?: CapabilitiesMeta;
}

/** A prompt-to-images request in a front end's terms, before it becomes tensors. */
export interface ImageRequest {
  id?: string;
  /** One per image. */
  prompts: string[];
  /** One per image, or one for all. */
  negativePrompts?: string[];
  /** Request parameters by the model's names (steps, seed, guidance_scale, ...). */
  parameters: Parameters;
  outputFormat?: OutputFormat;
  /** 0..100: the quality of jpeg and webp files. */
  outputCompression?: number;
  /** Image-to-image and inpainting: input image files (PNG, JPEG, WebP), one per image or one for all. */
  images?: Buffer[];
  /** Inpainting: mask files, one per image or one for all. */
  masks?: Buffer[];
}

/** The images of a response, each one file, and the response's own parameters. */
export interface GeneratedImages {
  images: Buffer[];
  format: OutputFormat;
  parameters?: Parameters;
}

function isTextInput(tensor: TensorMetadata | undefined): boolean {
  return tensor?.datatype === 'BYTES';
}

/**
 * The model as an image model, or undefined when it is not one (no BYTES `prompt` input, or no
 * UINT8 [B, H, W, C] output). Throws the core's error for a model that is not ready.
 */
export function describeImageModel(
  core: InferenceCore, name: string, version?: string, metadata: ModelMetadata = core.modelMetadata(name, version),
): ImageModel | undefined {
  const capabilities = core.modelCapabilities(name, version);
  const input = (inputName: string) => metadata.inputs.find((i) => i.name === inputName);
  const prompt = input(PROMPT_INPUT);
  const imageOutput = capabilities?.image_output
    ?? metadata.outputs.find((output) => output.datatype === 'UINT8' && output.shape.length === 4)?.name;
  if (!isTextInput(prompt) || imageOutput === undefined) return undefined;
  const batched = prompt!.shape[0] === -1 && prompt!.shape.length > 1;
  const maxBatch = batched ? core.modelConfig(name, version).max_batch_size : 1;
  return {
    name,
    version,
    hasNegativePrompt: isTextInput(input(NEGATIVE_PROMPT_INPUT)),
    batched,
    imageOutput,
    encodedOutput: capabilities?.encoded_output,
    maxImages: Math.max(1, capabilities?.max_images ?? maxBatch),
    takesImageFiles: takesFiles(capabilities, IMAGE_INPUT),
    capabilities,
  };
}

function takesFiles(capabilities: CapabilitiesMeta | undefined, name: string): boolean {
  return capabilities?.inputs?.some((input) => input.name === name && input.datatype === 'BYTES') ?? false;
}

/**
 * An image file sent as base64 text (a data URL's `data:image/png;base64,` prefix allowed), or a
 * 400 naming the field.
 */
export function decodeBase64Image(field: string, value: unknown): Buffer {
  if (typeof value !== 'string') throw invalidArg(`"${field}" must be a base64-encoded image file, got ${typeof value}`);
  const text = value.replace(/^data:[^,]*;base64,/, '').replace(/\s+/g, '');
  if (text.length === 0 || !/^[A-Za-z0-9+/_-]*={0,2}$/.test(text)) {
    throw invalidArg(`"${field}" must be a base64-encoded image file (PNG, JPEG or WebP)`);
  }
  return Buffer.from(text, 'base64');
}

/** Files as a BYTES tensor, one element per image: a single file serves every image. */
function fileTensor(name: string, files: Buffer[], count: number, batched: boolean): Tensor {
  const perImage = files.length === 1 ? Array<Buffer>(count).fill(files[0]) : files;
  if (perImage.length !== count) throw invalidArg(`"${name}" must hold 1 or ${count} images (one per image), got ${files.length}`);
  if (!batched && count > 1) throw invalidArg(`"${name}": this model takes one image per request`);
  return { name, datatype: 'BYTES', shape: batched ? [count, 1] : [1], data: joinBytesElements(perImage) };
}

/** The request's input image and mask files as tensors (none for text-to-image). */
export function imageFileTensors(model: ImageModel, request: Pick<ImageRequest, 'images' | 'masks'>, count: number): Tensor[] {
  if (request.images === undefined) {
    if (request.masks !== undefined) throw invalidArg('a mask needs an image to repaint');
    return [];
  }
  if (!model.takesImageFiles) throw invalidArg(`model '${model.name}' takes no input image (text-to-image only)`);
  const tensors = [fileTensor(IMAGE_INPUT, request.images, count, model.batched)];
  if (request.masks !== undefined) tensors.push(fileTensor(MASK_INPUT, request.masks, count, model.batched));
  return tensors;
}

/** The text-to-image models that are ready, by name. */
export function readyImageModels(core: InferenceCore): ImageModel[] {
  const names = [...new Set(core.repositoryIndex(true).map((status) => status.name))].sort();
  return names.map((name) => describeImageModel(core, name)).filter((model) => model !== undefined);
}

/** The model a request names, or the only ready text-to-image model when it names none. */
export function chooseImageModel(core: InferenceCore, name: string | undefined): ImageModel {
  if (name !== undefined) {
    const image = describeImageModel(core, name);
    if (image === undefined) {
      throw invalidArg(`model ${quoted(name, "'")} is not a text-to-image model (a BYTES input "${PROMPT_INPUT}", an image output)`);
    }
    return image;
  }
  const ready = readyImageModels(core);
  if (ready.length === 0) throw new SdserveError('SDS_ERR_MODEL_NOT_READY', 'no text-to-image model is ready');
  if (ready.length > 1) throw invalidArg(`"model" is required: ready text-to-image models are ${ready.map((m) => m.name).join(', ')}`);
  return ready[0];
}

function textTensor(name: string, texts: string[], batched: boolean): Tensor {
  return {
    name, datatype: 'BYTES', shape: batched ? [texts.length, 1] : [1],
    data: joinBytesElements(texts.map((text) => Buffer.from(text, 'utf8'))),
  };
}

/** 1. check the count and format  2. prompts as BYTES tensors  3. ask for encoded files where the backend makes them. */
export function toInferRequest(model: ImageModel, request: ImageRequest): InferRequest {
  const count = request.prompts.length;
  if (count < 1 || count > model.maxImages) {
    throw invalidArg(`model '${model.name}' makes 1 to ${model.maxImages} image(s) per request, ${count} were asked for`);
  }
  const format = request.outputFormat ?? 'png';
  if (model.encodedOutput === undefined && (format !== 'png' || request.outputCompression !== undefined)) {
    throw invalidArg(`model '${model.name}' gives pixels only, which sdserve encodes as PNG: `
      + 'output_format "png" without output_compression is all it supports');
  }
  const inputs = [textTensor(PROMPT_INPUT, request.prompts, model.batched)];
  if (request.negativePrompts !== undefined) {
    if (!model.hasNegativePrompt) throw invalidArg(`model '${model.name}' has no BYTES input "${NEGATIVE_PROMPT_INPUT}"`);
    const negatives = request.negativePrompts.length === 1 ? Array<string>(count).fill(request.negativePrompts[0]) : request.negativePrompts;
    inputs.push(textTensor(NEGATIVE_PROMPT_INPUT, negatives, model.batched));
  }
  inputs.push(...imageFileTensors(model, request, count));
  const parameters: Parameters = { ...request.parameters };
  if (model.encodedOutput !== undefined) {
    parameters.output_format = format;
    if (request.outputCompression !== undefined) parameters.output_compression = request.outputCompression;
  }
  return {
    ...(request.id !== undefined && { id: request.id }),
    model_name: model.name,
    ...(model.version !== undefined && { model_version: model.version }),
    inputs,
    outputs: [{ name: model.encodedOutput ?? model.imageOutput }],
    parameters,
  };
}

/**
 * Has the backend encode the images of any infer request to `model` (v2 generate's generic
 * bodies): its image output is swapped for the encoded one. A model without one is left alone.
 */
export function requestEncodedImages(model: ImageModel, request: InferRequest): InferRequest {
  if (model.encodedOutput === undefined) return request;
  const outputs = request.outputs ?? [{ name: model.imageOutput }];
  return {
    ...request,
    outputs: outputs.map((output) => (output.name === model.imageOutput ? { name: model.encodedOutput as string } : output)),
  };
}

/** The images of `tensor` as files: split from the backend's encoded output, or PNG-encoded off the event loop. */
export async function imageFiles(model: ImageModel, tensor: Tensor): Promise<Buffer[] | undefined> {
  if (tensor.name === model.encodedOutput && tensor.datatype === 'BYTES') {
    const files = splitBytesElements(tensor.data);
    if (files === undefined) throw new SdserveError('SDS_ERR_BACKEND', `output '${tensor.name}' holds malformed BYTES elements`);
    return files;
  }
  return isImageBatch(tensor) ? encodePngImages(tensor) : undefined;
}

/** The images of a response to `toInferRequest`. */
export async function fromInferResponse(model: ImageModel, request: ImageRequest, response: InferResponse): Promise<GeneratedImages> {
  for (const output of response.outputs) {
    const images = await imageFiles(model, output);
    if (images !== undefined) {
      return { images, format: request.outputFormat ?? 'png', ...(response.parameters && { parameters: response.parameters }) };
    }
  }
  throw new SdserveError('SDS_ERR_BACKEND', `model '${model.name}' returned no images`);
}

/** One request through the core: typed in, files out. */
export async function generateImages(
  core: InferenceCore, model: ImageModel, request: ImageRequest, signal?: AbortSignal,
): Promise<GeneratedImages> {
  const response = await core.infer(toInferRequest(model, request), signal);
  return fromInferResponse(model, request, response);
}

/**
 * What a client needs to build requests for an image model (the web playground's form): the
 * parameters its backend declares, with their ranges and the loaded model's defaults, the tasks,
 * the images per request, and the inputs beside the prompt.
 */
export interface GenerationCapabilities {
  model: string;
  version?: string;
  /** Whether the backend declared its parameters (then unknown ones are refused). */
  declared: boolean;
  tasks: string[];
  max_images: number;
  negative_prompt: boolean;
  /** The model's input names (e.g. `image` and `mask` where it takes them). */
  inputs: string[];
  output_formats: OutputFormat[];
  /** Declared request parameters by name; empty when the backend declares none. */
  parameters: Record<string, ParameterSpec>;
  /** The refiner model that finishes its text-to-image requests (`high_noise_fraction`), if it has one. */
  refiner?: string;
}

export function generationCapabilities(core: InferenceCore, name: string, version?: string): GenerationCapabilities {
  const metadata = core.modelMetadata(name, version);
  const model = describeImageModel(core, name, version, metadata);
  if (model === undefined) {
    throw invalidArg(`model ${quoted(name, "'")} is not a text-to-image model (a BYTES input "${PROMPT_INPUT}", an image output)`);
  }
  const declared = model.capabilities;
  return {
    model: name,
    ...(version !== undefined && { version }),
    declared: declared !== undefined,
    tasks: declared?.tasks ?? ['text_to_image'],
    max_images: model.maxImages,
    negative_prompt: model.hasNegativePrompt,
    inputs: metadata.inputs.map((input) => input.name),
    output_formats: model.encodedOutput === undefined ? ['png'] : [...OUTPUT_FORMATS],
    parameters: declared?.parameters ?? {},
    ...(declared?.refiner !== undefined && { refiner: declared.refiner }),
  };
}
