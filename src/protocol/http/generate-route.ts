/**
 * Triton's generate extension: `POST /v2/models/:model[/versions/:version]/generate` and
 * `/generate_stream`. The body is one flat JSON object: keys naming model inputs are inputs (a
 * string, or a list of them, for a batch), `parameters` and every other key are request
 * parameters. The response names each output: images (UINT8 [B,H,W,3|4]) as base64 files
 * (PNG, or the request's `output_format` where the backend encodes), other tensors as flat
 * lists, and the response's parameters, if any. `generate_stream` answers with server-sent
 * events: one `{"progress": {...}}` per denoising step (with `preview_png` on the steps the
 * request asked previews for, parameter `preview`), then the response, or `{"error": "..."}`;
 * a decoupled model's every response is an event of its own. `generate` takes a decoupled model
 * that answers with exactly one response. While the request waits for an instance,
 * `{"queue": {"position": n}}` whenever its place changes.
 * `GET /v2/models/:model/capabilities`: what a client needs to build these bodies (the declared
 * parameters, tasks, images per request; generation module's `generationCapabilities`).
 * For a model that takes input images, `image` and `mask` are base64 files (PNG, JPEG, WebP):
 * one for all prompts, or a list of one per prompt.
 */
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { InferenceCore } from '../../core/inference-core.js';
import type {
  InferProgress, InferRequest, InferResponse, ModelMetadata, Parameters, StreamedAnswer, Tensor,
} from '../../core/types.js';
import { invalidArg, toSdserveError } from '../../errors.js';
import {
  decodeBase64Image, describeImageModel, encodePngPreview, generationCapabilities, IMAGE_INPUT, imageFiles,
  imageFileTensors, MASK_INPUT, PROMPT_INPUT, requestEncodedImages, type ImageModel,
} from '../generation/index.js';
import { decodeJsonTensorData, encodeJsonTensorData } from '../json-tensor.js';
import { disconnectSignal } from './disconnect-signal.js';
import { MODEL_PATHS, type ModelParams } from './model-routes.js';

type GenerateBody = Record<string, unknown>;

const generateBodySchema = { type: 'object' } as const;

/**
 * A generate body as an infer request: 1. inputs from the keys naming model inputs
 * 2. parameters from the rest.
 */
export function generateInferRequest(
  metadata: ModelMetadata, params: ModelParams, body: GenerateBody, fileInputs: ReadonlySet<string> = new Set(),
): InferRequest {
  const inputNames = new Set(metadata.inputs.map((i) => i.name));
  const given = metadata.inputs.filter((i) => body[i.name] !== undefined && !fileInputs.has(i.name));
  const inputs: Tensor[] = given.map((input) => {
    const values = Array.isArray(body[input.name]) ? body[input.name] as unknown[] : [body[input.name]];
    const shape = input.shape.map((d, i) => (i === 0 && d === -1 ? values.length : d === -1 ? 1 : d));
    return { name: input.name, datatype: input.datatype, shape, data: decodeJsonTensorData(input.name, input.datatype, shape, values) };
  });
  const { parameters, id, ...rest } = body;
  if (parameters !== undefined && (typeof parameters !== 'object' || parameters === null || Array.isArray(parameters))) {
    throw invalidArg('generate: "parameters" must be an object');
  }
  const extra = Object.fromEntries(Object.entries(rest).filter(([key]) => !inputNames.has(key)));
  return {
    id: typeof id === 'string' ? id : undefined,
    model_name: params.model,
    model_version: params.version,
    inputs,
    parameters: scalarParameters({ ...(parameters as Record<string, unknown> | undefined), ...extra }),
  };
}

/**
 * Request parameters are scalars (KServe v2): a list or object (such as `loras`) travels as its
 * JSON text, which is how v2 infer clients send it too.
 */
function scalarParameters(values: Record<string, unknown>): Parameters {
  return Object.fromEntries(Object.entries(values).map(([key, value]) => [
    key, typeof value === 'object' && value !== null ? JSON.stringify(value) : value as Parameters[string],
  ]));
}

/** The request, with the backend asked for encoded images where it makes them, and the model's image facts. */
function generateRequest(core: InferenceCore, params: ModelParams, body: GenerateBody): { request: InferRequest; image?: ImageModel } {
  const metadata = core.modelMetadata(params.model, params.version);
  const image = describeImageModel(core, params.model, params.version, metadata);
  // Input images come as base64 files under the input's name (`image`, `mask`).
  const fileInputs = new Set(image?.takesImageFiles ? [IMAGE_INPUT, MASK_INPUT] : []);
  const request = generateInferRequest(metadata, params, body, fileInputs);
  if (image === undefined) return { request };
  const files = (name: string) => (body[name] === undefined ? undefined
    : (Array.isArray(body[name]) ? body[name] as unknown[] : [body[name]]).map((value) => decodeBase64Image(name, value)));
  const prompts = request.inputs.find((input) => input.name === PROMPT_INPUT);
  const count = prompts !== undefined && image.batched ? prompts.shape[0] : 1;
  request.inputs.push(...imageFileTensors(image, { images: files(IMAGE_INPUT), masks: files(MASK_INPUT) }, count));
  return { request: requestEncodedImages(image, request), image };
}

async function toGenerateResponse(response: InferResponse, image: ImageModel | undefined): Promise<Record<string, unknown>> {
  const body: Record<string, unknown> = { model_name: response.model_name, model_version: response.model_version };
  if (response.id) body.id = response.id;
  for (const output of response.outputs) {
    const files = image && await imageFiles(image, output);
    // Encoded files answer under the image output's name, as PNGs always have.
    const key = image && output.name === image.encodedOutput ? image.imageOutput : output.name;
    body[key] = files
      ? files.map((file) => file.toString('base64'))
      : encodeJsonTensorData(output.name, output.datatype, output.shape, output.data);
  }
  if (response.parameters) body.parameters = response.parameters;
  return body;
}

function sendEvent(reply: FastifyReply, data: unknown): void {
  reply.raw.write(`data: ${JSON.stringify(data)}\n\n`);
}

interface StreamEvents {
  onProgress: (progress: InferProgress) => void;
  onQueuePosition: (position: number) => void;
  onAnswer: (answer: StreamedAnswer) => void;
  send: (data: unknown) => void;
  flushed: () => Promise<void>;
}

/**
 * The stream's events in the order they happened: queue positions, progress (each preview PNG
 * encoded off the event loop first), then each answer, its images encoded likewise.
 */
function orderedEvents(reply: FastifyReply, image: ImageModel | undefined): StreamEvents {
  let queue = Promise.resolve();
  const enqueue = (event: () => Promise<unknown> | unknown) => {
    queue = queue.then(async () => sendEvent(reply, await event()))
      .catch((err: unknown) => sendEvent(reply, { error: toSdserveError(err).message }));
  };
  const onQueuePosition = (position: number) => enqueue(() => ({ queue: { position } }));
  const onProgress = ({ preview, ...progress }: InferProgress) => {
    const png = preview && encodePngPreview(preview);
    enqueue(async () => {
      const previewPng = png && (await png).toString('base64');
      return { progress: previewPng ? { ...progress, preview_png: previewPng } : progress };
    });
  };
  // A final flag sent alone ends the stream and is no event of its own.
  const onAnswer = ({ response, error }: StreamedAnswer) => {
    if (response !== undefined) enqueue(() => toGenerateResponse(response, image));
    else if (error !== undefined) enqueue(() => ({ error: error.message }));
  };
  return { onProgress, onQueuePosition, onAnswer, send: (data) => enqueue(() => data), flushed: () => queue };
}

export function registerGenerateRoutes(app: FastifyInstance, core: InferenceCore): void {
  for (const base of MODEL_PATHS) {
    app.get<{ Params: ModelParams }>(`${base}/capabilities`, async (request) => (
      generationCapabilities(core, request.params.model, request.params.version)
    ));
    app.post<{ Params: ModelParams; Body: GenerateBody }>(`${base}/generate`, { schema: { body: generateBodySchema } },
      async (request, reply) => {
        const { request: inferRequest, image } = generateRequest(core, request.params, request.body);
        return toGenerateResponse(await core.infer(inferRequest, disconnectSignal(reply)), image);
      });
    app.post<{ Params: ModelParams; Body: GenerateBody }>(`${base}/generate_stream`, { schema: { body: generateBodySchema } },
      async (request, reply) => {
        const { request: inferRequest, image } = generateRequest(core, request.params, request.body);
        reply.hijack();
        reply.raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
        // Headers now, not with the first event: a queued request still tells its client it is accepted.
        reply.raw.flushHeaders();
        const events = orderedEvents(reply, image);
        try {
          await core.inferStream(inferRequest, events.onAnswer, disconnectSignal(reply), events.onProgress, events.onQueuePosition);
        } catch (err) {
          events.send({ error: toSdserveError(err).message });
        }
        await events.flushed();
        reply.raw.end();
      });
  }
}
