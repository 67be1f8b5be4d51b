/**
 * Triton's generate extension: `POST /v2/models/:model[/versions/:version]/generate` and
 * `/generate_stream`. The body is one flat JSON object: keys naming model inputs are inputs (a
 * string, or a list of them, for a batch), `parameters` and every other key are request
 * parameters. The response names each output: images (UINT8 [B,H,W,3|4]) as base64 PNGs, other
 * tensors as flat lists. `generate_stream` answers with server-sent events: one
 * `{"progress": {...}}` per denoising step (with `preview_png` on the steps the request asked
 * previews for, parameter `preview`), then the response, or `{"error": "..."}`.
 */
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { InferenceCore } from '../../core/inference-core.js';
import type { InferRequest, InferResponse, Parameters, Tensor } from '../../core/types.js';
import { invalidArg, toSdserveError } from '../../errors.js';
import { encodePngImages, isImageBatch } from '../image-encoding.js';
import { decodeJsonTensorData, encodeJsonTensorData } from '../json-tensor.js';
import { disconnectSignal } from './disconnect-signal.js';
import { MODEL_PATHS, type ModelParams } from './model-routes.js';

type GenerateBody = Record<string, unknown>;

const generateBodySchema = { type: 'object' } as const;

/**
 * A generate body as an infer request: 1. inputs from the keys naming model inputs
 * 2. parameters from the rest.
 */
export function generateInferRequest(core: InferenceCore, params: ModelParams, body: GenerateBody): InferRequest {
  const metadata = core.modelMetadata(params.model, params.version);
  const inputNames = new Set(metadata.inputs.map((i) => i.name));
  const inputs: Tensor[] = metadata.inputs.filter((i) => body[i.name] !== undefined).map((input) => {
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
    parameters: { ...(parameters as Parameters | undefined), ...(extra as Parameters) },
  };
}

function toGenerateResponse(response: InferResponse): Record<string, unknown> {
  const body: Record<string, unknown> = { model_name: response.model_name, model_version: response.model_version };
  if (response.id) body.id = response.id;
  for (const output of response.outputs) {
    body[output.name] = isImageBatch(output)
      ? encodePngImages(output).map((png) => png.toString('base64'))
      : encodeJsonTensorData(output.name, output.datatype, output.shape, output.data);
  }
  return body;
}

function sendEvent(reply: FastifyReply, data: unknown): void {
  reply.raw.write(`data: ${JSON.stringify(data)}\n\n`);
}

export function registerGenerateRoutes(app: FastifyInstance, core: InferenceCore): void {
  for (const base of MODEL_PATHS) {
    app.post<{ Params: ModelParams; Body: GenerateBody }>(`${base}/generate`, { schema: { body: generateBodySchema } },
      async (request, reply) => {
        const inferRequest = generateInferRequest(core, request.params, request.body);
        return toGenerateResponse(await core.infer(inferRequest, disconnectSignal(reply)));
      });
    app.post<{ Params: ModelParams; Body: GenerateBody }>(`${base}/generate_stream`, { schema: { body: generateBodySchema } },
      async (request, reply) => {
        const inferRequest = generateInferRequest(core, request.params, request.body);
        reply.hijack();
        reply.raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
        // Headers now, not with the first event: a queued request still tells its client it is accepted.
        reply.raw.flushHeaders();
        try {
          const response = await core.infer(inferRequest, disconnectSignal(reply), ({ preview, ...progress }) => {
            const png = preview && encodePngImages({ name: 'preview', datatype: 'UINT8', shape: [1, ...preview.shape], data: preview.data })[0];
            sendEvent(reply, { progress: png ? { ...progress, preview_png: png.toString('base64') } : progress });
          });
          sendEvent(reply, toGenerateResponse(response));
        } catch (err) {
          sendEvent(reply, { error: toSdserveError(err).message });
        }
        reply.raw.end();
      });
  }
}
