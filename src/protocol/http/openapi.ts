/**
 * The OpenAPI 3.1 description of the whole HTTP API, served at `GET /v2/openapi.json`: KServe v2
 * (health, metadata, inference) with Triton's extensions (binary tensor data, model configuration,
 * statistics, model repository, generate), the OpenAI-style routes under /v1 and the playground.
 * Request bodies reuse the schemas the routes validate with (schemas.ts), so the two cannot
 * disagree; tests/unit/protocol/openapi.test.ts checks that every registered route is described.
 */
import type { FastifyInstance } from 'fastify';
import { KSERVE_DATATYPES } from '../../core/types.js';
import { SERVER_VERSION } from '../../core/data-plane.js';
import { img2imgBodySchema, txt2imgBodySchema } from './a1111-routes.js';
import { imagesBodySchema } from './openai-routes.js';
import {
  inferRequestSchema, loadModelSchema, repositoryIndexSchema, unloadModelSchema,
} from './schemas.js';

export const OPENAPI_PATH = '/v2/openapi.json';

const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });
const json = (schema: object) => ({ 'application/json': { schema } });
const errorReply = (description: string) => ({ description, content: json(ref('Error')) });
const openAiErrorReply = (description: string) => ({ description, content: json(ref('OpenAIError')) });
const emptyReply = (description: string) => ({ description });

/** The error answers every route under /v2/models/{model} can give for its model and version. */
const MODEL_ERRORS = {
  400: errorReply('Malformed request, or unknown model (Triton answers an unknown model name with 400).'),
  404: errorReply('The model has no such version.'),
  503: errorReply('The model has no ready version.'),
};

/** What an inference (infer, generate, images) can answer besides success. */
const INFERENCE_ERRORS = {
  ...MODEL_ERRORS,
  413: errorReply('The body, raw or inflated, is larger than the body limit.'),
  500: errorReply('The backend failed while running the request, or exited while running it.'),
  503: errorReply('The model has no ready version, or its queue is full.'),
  400: errorReply('Malformed request, unknown model, inputs or parameters the model does not take, or a request over '
    + "the model's cost limits (max_image_pixels, max_request_cost, max_prompt_chars)."),
  504: errorReply("The request's queue timeout (parameter `timeout`, µs) expired before it ran, or it ran past the "
    + "model's execution deadline (max_execution_secs)."),
};

const modelParam = {
  name: 'model', in: 'path', required: true, description: 'Model name.', schema: { type: 'string', minLength: 1 },
};
const versionParam = {
  name: 'version', in: 'path', required: true, description: 'Model version (a positive integer, as text).',
  schema: { type: 'string', minLength: 1 },
};

/** Both URL forms of a model route: any ready version, and one version. */
function modelPaths(suffix: string, operation: (versioned: boolean) => object): Record<string, object> {
  return {
    [`/v2/models/{model}${suffix}`]: { parameters: [modelParam], ...operation(false) },
    [`/v2/models/{model}/versions/{version}${suffix}`]: { parameters: [modelParam, versionParam], ...operation(true) },
  };
}

const infer = (versioned: boolean) => ({
  post: {
    operationId: versioned ? 'inferVersion' : 'infer',
    summary: 'Inference (KServe v2 $inference_request); JSON, or JSON followed by binary tensor data.',
    parameters: [
      {
        name: 'Inference-Header-Content-Length', in: 'header', required: false,
        description: "Triton's binary tensor data extension: the length of the JSON header; the binary sections follow it.",
        schema: { type: 'integer', minimum: 0 },
      },
      {
        name: 'Content-Encoding', in: 'header', required: false,
        description: 'A compressed body (gzip or deflate).', schema: { type: 'string', enum: ['gzip', 'deflate', 'identity'] },
      },
    ],
    requestBody: {
      required: true,
      content: {
        'application/json': { schema: ref('InferRequest') },
        'application/octet-stream': {
          description: 'The JSON header (Inference-Header-Content-Length bytes) followed by the raw tensors named by their `binary_data_size` parameters.',
          schema: { type: 'string', format: 'binary' },
        },
      },
    },
    responses: {
      200: {
        description: 'The outputs. Binary outputs (parameter `binary_data` / `binary_data_output`, and FP16/BF16 always) follow the JSON header as raw bytes.',
        headers: {
          'Inference-Header-Content-Length': {
            description: 'Present when binary outputs follow the JSON header: its length.', schema: { type: 'integer' },
          },
        },
        content: {
          'application/json': { schema: ref('InferResponse') },
          'application/octet-stream': { schema: { type: 'string', format: 'binary' } },
        },
      },
      ...INFERENCE_ERRORS,
    },
  },
});

const generate = (stream: boolean) => (versioned: boolean) => ({
  post: {
    operationId: `generate${stream ? 'Stream' : ''}${versioned ? 'Version' : ''}`,
    summary: stream
      ? "Triton's generate extension, streamed: server-sent events, one `progress` per denoising step, then the response (or an `error`)."
      : "Triton's generate extension: flat JSON in, each output by name out (images as base64 PNGs).",
    requestBody: { required: true, content: json(ref('GenerateRequest')) },
    responses: {
      200: stream
        ? {
          description: 'Events `data: {"queue": {"position": n}}` while the request waits (1: next), `data: {"progress": {...}}` per step, '
            + 'then `data: <GenerateResponse>` or `data: {"error": "..."}`. '
            + 'Errors found after the stream has started come as that last event.',
          content: { 'text/event-stream': { schema: { type: 'string' } } },
        }
        : { description: 'The outputs by name.', content: json(ref('GenerateResponse')) },
      ...INFERENCE_ERRORS,
    },
  },
});

const modelRead = (operationId: string, summary: string, ok: object, errors: object = MODEL_ERRORS) => (versioned: boolean) => ({
  get: { operationId: `${operationId}${versioned ? 'Version' : ''}`, summary, responses: { 200: ok, ...errors } },
});

const modelReady = (versioned: boolean) => ({
  get: {
    operationId: `modelReady${versioned ? 'Version' : ''}`,
    summary: 'Model readiness: 200 when ready, 400 otherwise (also for an unknown model), empty body either way.',
    responses: { 200: emptyReply('Ready.'), 400: emptyReply('Not ready, or unknown.') },
  },
});

const modelStats = (versioned: boolean) => ({
  get: {
    operationId: `modelStatistics${versioned ? 'Version' : ''}`,
    summary: "Triton's statistics extension for one model (every version, or one).",
    responses: {
      200: { description: 'Statistics.', content: json(ref('StatisticsResponse')) },
      400: MODEL_ERRORS[400],
      404: MODEL_ERRORS[404],
    },
  },
});

const tensorMetadata = {
  type: 'object',
  required: ['name', 'datatype', 'shape'],
  properties: {
    name: { type: 'string' },
    datatype: { type: 'string', enum: KSERVE_DATATYPES },
    shape: { type: 'array', items: { type: 'integer' }, description: '-1 for a variable dimension.' },
  },
};

const statisticDuration = {
  type: 'object', required: ['count', 'ns'],
  properties: { count: { type: 'integer', minimum: 0 }, ns: { type: 'integer', minimum: 0 } },
};

/** A request parameter of the diffusion backend, with the range it checks. */
const diffusionParameters = {
  steps: { type: 'integer', minimum: 1, maximum: 1000, description: 'Denoising steps.' },
  width: { type: 'integer', minimum: 8, maximum: 4096, multipleOf: 8, description: 'Image width in pixels.' },
  height: { type: 'integer', minimum: 8, maximum: 4096, multipleOf: 8, description: 'Image height in pixels.' },
  seed: {
    description: 'Random seed (an integer, or its decimal text; "" = random).',
    anyOf: [{ type: 'integer', minimum: 0, maximum: 18446744073709551615 }, { type: 'string' }],
  },
  guidance_scale: { type: 'number', minimum: 0, description: 'Classifier-free guidance scale.' },
  scheduler: { type: 'string', description: 'A scheduler name (euler, euler_karras, euler_a, ddim, pndm, dpm++, dpm++_2m_karras, dpm++_2m_sde_karras, dpm2_a_karras, unipc, heun, lcm, tcd, ...) or a diffusers class name; "" = the weights\' own.' },
  preview: { type: 'integer', minimum: 0, description: 'generate_stream: a preview image every N steps.' },
  priority: { type: 'integer', minimum: 0, description: "Queue priority level (the model's dynamic_batching priority levels)." },
  timeout: { type: 'integer', minimum: 0, description: 'Queue timeout in microseconds.' },
};

const textInput = {
  anyOf: [
    { type: 'string' },
    { type: 'object', required: ['b64'], properties: { b64: { type: 'string' } } },
    { type: 'array', items: { anyOf: [{ type: 'string' }, { type: 'object', required: ['b64'], properties: { b64: { type: 'string' } } }] } },
  ],
};

const parametersSchema = {
  type: 'object',
  description: 'KServe v2 $parameters: scalar values only.',
  additionalProperties: { type: ['string', 'number', 'boolean'] },
};

const components = {
  schemas: {
    Error: {
      type: 'object', required: ['error'], properties: { error: { type: 'string' } },
      description: 'Every /v2 error answer (KServe v2 $inference_error_response).',
    },
    OpenAIError: {
      type: 'object',
      required: ['error'],
      properties: {
        error: {
          type: 'object',
          required: ['message', 'type', 'param', 'code'],
          properties: {
            message: { type: 'string' },
            type: { type: 'string', enum: ['invalid_request_error', 'server_error'] },
            param: { type: 'null' },
            code: { type: ['string', 'null'] },
          },
        },
      },
    },
    Parameters: parametersSchema,
    ServerMetadata: {
      type: 'object', required: ['name', 'version', 'extensions'],
      properties: { name: { type: 'string' }, version: { type: 'string' }, extensions: { type: 'array', items: { type: 'string' } } },
    },
    TensorMetadata: tensorMetadata,
    ModelMetadata: {
      type: 'object', required: ['name', 'versions', 'platform', 'inputs', 'outputs'],
      properties: {
        name: { type: 'string' },
        versions: { type: 'array', items: { type: 'string' } },
        platform: { type: 'string' },
        inputs: { type: 'array', items: ref('TensorMetadata') },
        outputs: { type: 'array', items: ref('TensorMetadata') },
      },
    },
    GenerationCapabilities: {
      type: 'object',
      description: "What a client needs to build generate requests for an image model: the backend's declared parameters "
        + "(with ranges and the loaded model's defaults), tasks, images per request and inputs.",
      required: ['model', 'declared', 'tasks', 'max_images', 'negative_prompt', 'inputs', 'output_formats', 'parameters'],
      properties: {
        model: { type: 'string' },
        version: { type: 'string' },
        declared: { type: 'boolean', description: 'Whether the backend declares its parameters (unknown ones are then refused).' },
        tasks: { type: 'array', items: { type: 'string' }, description: 'e.g. text_to_image.' },
        max_images: { type: 'integer', minimum: 1, description: 'Images one request may ask for.' },
        negative_prompt: { type: 'boolean', description: 'Whether the model takes a negative prompt.' },
        inputs: { type: 'array', items: { type: 'string' }, description: "The model's input names." },
        output_formats: { type: 'array', items: { type: 'string', enum: ['png', 'jpeg', 'webp'] } },
        parameters: {
          type: 'object',
          description: 'Request parameters by name: type, minimum, maximum, multiple_of, enum, default, aliases, description, examples.',
          additionalProperties: { type: 'object' },
        },
        refiner: {
          type: 'string',
          description: 'The refiner model of the repository that finishes text-to-image requests under `high_noise_fraction` '
            + '(the config parameter `refiner`); absent when the model has none.',
        },
      },
    },
    ModelConfig: {
      type: 'object',
      description: "The model's config.pbtxt in Triton's JSON form (protobuf JSON mapping of ModelConfig, field names as in the proto).",
      required: ['name', 'max_batch_size', 'input', 'output'],
      properties: {
        name: { type: 'string' },
        platform: { type: 'string' },
        backend: { type: 'string' },
        max_batch_size: { type: 'integer' },
        input: { type: 'array', items: { type: 'object' } },
        output: { type: 'array', items: { type: 'object' } },
        instance_group: { type: 'array', items: { type: 'object' } },
        parameters: { type: 'object' },
      },
    },
    InferRequest: inferRequestSchema,
    InferResponse: {
      type: 'object', required: ['model_name', 'model_version', 'outputs'],
      properties: {
        id: { type: 'string' },
        model_name: { type: 'string' },
        model_version: { type: 'string' },
        parameters: ref('Parameters'),
        outputs: {
          type: 'array',
          items: {
            type: 'object', required: ['name', 'datatype', 'shape'],
            properties: {
              name: { type: 'string' },
              datatype: { type: 'string', enum: KSERVE_DATATYPES },
              shape: { type: 'array', items: { type: 'integer', minimum: 0 } },
              parameters: ref('Parameters'),
              data: { type: 'array', description: 'Flat, row-major; absent for a binary output (parameter binary_data_size).' },
            },
          },
        },
      },
    },
    GenerateRequest: {
      type: 'object',
      description: 'Keys naming model inputs are inputs (a string, `{"b64": ...}`, or a list of them for a batch); '
        + '`parameters` and every other key are request parameters. The properties listed are the text-to-image '
        + "models' (backend diffusion); other models name their own inputs.",
      properties: {
        prompt: textInput,
        negative_prompt: textInput,
        id: { type: 'string' },
        parameters: ref('Parameters'),
        ...diffusionParameters,
      },
      additionalProperties: true,
    },
    GenerateResponse: {
      type: 'object', required: ['model_name', 'model_version'],
      description: 'Each output by name: images ([B, H, W, 3|4] UINT8) as a list of base64 PNGs, other tensors as flat lists.',
      properties: {
        id: { type: 'string' },
        model_name: { type: 'string' },
        model_version: { type: 'string' },
        generated_image: { type: 'array', items: { type: 'string', contentEncoding: 'base64', contentMediaType: 'image/png' } },
      },
      additionalProperties: { type: 'array' },
    },
    StatisticDuration: statisticDuration,
    ModelStatistics: {
      type: 'object',
      required: ['name', 'version', 'last_inference', 'inference_count', 'execution_count', 'inference_stats', 'batch_stats'],
      properties: {
        name: { type: 'string' },
        version: { type: 'string' },
        last_inference: { type: 'integer', description: 'Milliseconds since the epoch; 0 = never.' },
        inference_count: { type: 'integer', minimum: 0 },
        execution_count: { type: 'integer', minimum: 0 },
        inference_stats: {
          type: 'object',
          additionalProperties: ref('StatisticDuration'),
          required: ['success', 'fail', 'queue', 'compute_input', 'compute_infer', 'compute_output'],
        },
        batch_stats: {
          type: 'array',
          items: {
            type: 'object', required: ['batch_size', 'compute_input', 'compute_infer', 'compute_output'],
            properties: {
              batch_size: { type: 'integer', minimum: 1 },
              compute_input: ref('StatisticDuration'),
              compute_infer: ref('StatisticDuration'),
              compute_output: ref('StatisticDuration'),
            },
          },
        },
      },
    },
    StatisticsResponse: {
      type: 'object', required: ['model_stats'],
      properties: { model_stats: { type: 'array', items: ref('ModelStatistics') } },
    },
    RepositoryIndexRequest: repositoryIndexSchema,
    RepositoryIndex: {
      type: 'array',
      items: {
        type: 'object', required: ['name', 'version', 'state', 'reason'],
        properties: {
          name: { type: 'string' },
          version: { type: 'string' },
          state: { type: 'string', enum: ['UNKNOWN', 'READY', 'UNAVAILABLE', 'LOADING', 'UNLOADING'] },
          reason: { type: 'string' },
        },
      },
    },
    LoadRequest: loadModelSchema,
    UnloadRequest: unloadModelSchema,
    ImagesRequest: { ...imagesBodySchema, additionalProperties: false },
    Txt2ImgRequest: txt2imgBodySchema,
    Img2ImgRequest: img2imgBodySchema,
    ImagesEditRequest: {
      type: 'object',
      required: ['image', 'prompt'],
      properties: {
        // A file part: OpenAPI 3.1 writes binary content with contentMediaType (no JSON type).
        image: { contentMediaType: 'application/octet-stream', description: 'A PNG, JPEG or WebP file; its transparent pixels mark what to edit when there is no mask.' },
        mask: { contentMediaType: 'application/octet-stream', description: 'A PNG file the size of the image; its transparent pixels mark what to edit.' },
        prompt: { type: 'string', minLength: 1 },
        model: { type: 'string' },
        n: { type: 'integer', minimum: 1, maximum: 10 },
        size: { type: 'string', pattern: '^(auto|[1-9][0-9]*x[1-9][0-9]*)$' },
        response_format: { enum: ['b64_json'] },
        output_format: { enum: ['png', 'jpeg', 'webp'] },
        output_compression: { type: 'integer', minimum: 0, maximum: 100 },
        user: { type: 'string' },
        negative_prompt: { type: 'string' },
        steps: { type: 'integer', minimum: 1 },
        seed: { type: 'integer', minimum: 0 },
        guidance_scale: { type: 'number' },
        scheduler: { type: 'string' },
        strength: { type: 'number', exclusiveMinimum: 0, maximum: 1 },
      },
    },
    Txt2ImgResponse: {
      type: 'object', required: ['images', 'parameters', 'info'],
      properties: {
        images: { type: 'array', items: { type: 'string', contentEncoding: 'base64', contentMediaType: 'image/png' } },
        parameters: { type: 'object' },
        info: { type: 'string', description: 'JSON: seeds, prompts and one A1111 infotext per image.' },
      },
    },
    ImagesResponse: {
      type: 'object', required: ['created', 'data'],
      properties: {
        created: { type: 'integer' },
        output_format: { type: 'string', enum: ['png', 'jpeg', 'webp'] },
        data: {
          type: 'array',
          items: { type: 'object', required: ['b64_json'], properties: { b64_json: { type: 'string', contentEncoding: 'base64', contentMediaType: 'image/png' } } },
        },
      },
    },
    ModelList: {
      type: 'object', required: ['object', 'data'],
      properties: {
        object: { const: 'list' },
        data: {
          type: 'array',
          items: {
            type: 'object', required: ['id', 'object', 'created', 'owned_by'],
            properties: { id: { type: 'string' }, object: { const: 'model' }, created: { type: 'integer' }, owned_by: { type: 'string' } },
          },
        },
      },
    },
  },
};

const optionalJsonBody = (schema: string) => ({ required: false, content: json(ref(schema)) });

type Operation = { requestBody?: object; responses: Record<string, object> };

/**
 * The answers of the request guard (request-guard.ts), which runs before every route: 401 without
 * the API key (`--api-key`), 403 for a restricted API group without its header
 * (`--http-restricted-api`) or a cross-origin write, 415 for a body that is not JSON (the infer
 * route also takes application/octet-stream). /playground is public.
 */
function withGuardAnswers(paths: Record<string, Record<string, unknown>>): Record<string, Record<string, unknown>> {
  for (const [path, item] of Object.entries(paths)) {
    const reply = path.startsWith('/v1/') ? openAiErrorReply : errorReply;
    for (const operation of Object.values(item).filter((value): value is Operation => (value as Operation).responses !== undefined)) {
      if (path !== '/playground' && path !== '/favicon.ico') {
        operation.responses[401] ??= reply('The server has an API key (--api-key) and the request does not send it as `Authorization: Bearer <key>`.');
        operation.responses[403] ??= reply("The route's API group is restricted (--http-restricted-api) and the request lacks its header, "
          + 'or a write comes from a web page of another origin.');
      }
      if (operation.requestBody !== undefined) {
        operation.responses[415] ??= reply('A body whose Content-Type is not JSON (the infer route also takes application/octet-stream).');
      }
    }
  }
  return paths;
}

/** The document. Every route registered by buildHttpServer appears here (HEAD routes are fastify's own for each GET). */
export const OPENAPI_DOCUMENT = {
  openapi: '3.1.0',
  info: {
    title: 'sdserve HTTP API',
    version: SERVER_VERSION,
    description: 'KServe v2 inference protocol with Triton\'s extensions, an OpenAI-style images API, Automatic1111\'s txt2img API and a web playground. '
      + 'Bodies are JSON (gzip or deflate Content-Encoding accepted); a JSON object may have at most 128 members and '
      + 'JSON may nest 32 levels (400). A route that does not exist answers 404 with an error body.',
  },
  paths: withGuardAnswers({
    '/v2/health/live': {
      get: {
        operationId: 'serverLive', summary: 'Liveness: 200 when live, 400 otherwise; empty body.',
        responses: { 200: emptyReply('Live.'), 400: emptyReply('Not live (shutting down).') },
      },
    },
    '/v2/health/ready': {
      get: {
        operationId: 'serverReady', summary: 'Readiness: 200 when every model the server was asked to load is ready, 400 otherwise; empty body.',
        responses: { 200: emptyReply('Ready.'), 400: emptyReply('Not ready.') },
      },
    },
    '/v2': {
      get: { operationId: 'serverMetadata', summary: 'Server metadata.', responses: { 200: { description: 'Metadata.', content: json(ref('ServerMetadata')) } } },
    },
    [OPENAPI_PATH]: {
      get: { operationId: 'openapi', summary: 'This document.', responses: { 200: { description: 'OpenAPI 3.1.', content: json({ type: 'object' }) } } },
    },
    '/v2/models/stats': {
      get: {
        operationId: 'statistics', summary: "Triton's statistics extension for every model.",
        responses: { 200: { description: 'Statistics.', content: json(ref('StatisticsResponse')) } },
      },
    },
    ...modelPaths('', modelRead('modelMetadata', 'Model metadata.', { description: 'Metadata.', content: json(ref('ModelMetadata')) })),
    ...modelPaths('/ready', modelReady),
    ...modelPaths('/config', modelRead('modelConfig', "Triton's model configuration extension.", { description: 'Configuration.', content: json(ref('ModelConfig')) })),
    ...modelPaths('/stats', modelStats),
    ...modelPaths('/capabilities', modelRead('generationCapabilities',
      'What generate requests to an image model may carry (the declared parameters and their ranges); 400 for a model that is not one.',
      { description: 'The capabilities.', content: json(ref('GenerationCapabilities')) })),
    ...modelPaths('/infer', infer),
    ...modelPaths('/generate', generate(false)),
    ...modelPaths('/generate_stream', generate(true)),
    '/v2/repository/index': {
      post: {
        operationId: 'repositoryIndex', summary: "Triton's model repository extension: every model and its state (`ready: true`: ready ones only).",
        requestBody: optionalJsonBody('RepositoryIndexRequest'),
        responses: {
          200: { description: 'The index.', content: json(ref('RepositoryIndex')) },
          400: errorReply('Malformed body.'),
          413: errorReply('The body is larger than the body limit.'),
        },
      },
    },
    '/v2/repository/models/{model}/load': {
      parameters: [modelParam],
      post: {
        operationId: 'repositoryModelLoad',
        summary: 'Loads (or reloads) a model; `parameters.config` overrides its config.pbtxt (JSON form). Explicit model control only.',
        requestBody: optionalJsonBody('LoadRequest'),
        responses: {
          200: emptyReply('Loaded.'),
          400: errorReply('Malformed body or config override, unknown model, a `file:` override (not supported), or a config '
            + 'the server or the backend refused (a parameter value, a file it names that is not there).'),
          413: errorReply('The body is larger than the body limit.'),
          500: errorReply('The model failed to load for another reason (the backend crashed or ran out of memory).'),
          503: errorReply('Model control is not explicit.'),
        },
      },
    },
    '/v2/repository/models/{model}/unload': {
      parameters: [modelParam],
      post: {
        operationId: 'repositoryModelUnload', summary: 'Unloads a model. Explicit model control only.',
        requestBody: optionalJsonBody('UnloadRequest'),
        responses: {
          200: emptyReply('Unloaded.'),
          400: errorReply('Malformed body, or unknown model.'),
          413: errorReply('The body is larger than the body limit.'),
          503: errorReply('Model control is not explicit.'),
        },
      },
    },
    '/v1/models': {
      get: {
        operationId: 'openAiModels', summary: 'The ready text-to-image models, in OpenAI\'s list shape.',
        responses: { 200: { description: 'The list.', content: json(ref('ModelList')) } },
      },
    },
    '/v1/images/generations': {
      post: {
        operationId: 'openAiImagesGenerations',
        summary: "OpenAI-style image generation; sdserve's own parameters (negative_prompt, steps, seed, guidance_scale, scheduler) beside OpenAI's.",
        requestBody: { required: true, content: json(ref('ImagesRequest')) },
        responses: {
          200: { description: 'The images as base64 PNGs.', content: json(ref('ImagesResponse')) },
          400: openAiErrorReply('Malformed request, an unsupported field or value, or a model that is not text-to-image.'),
          404: openAiErrorReply('Unknown model (`code: "model_not_found"`).'),
          413: openAiErrorReply('The body is larger than the body limit.'),
          500: openAiErrorReply('The backend failed while running the request.'),
          503: openAiErrorReply('No text-to-image model is ready, or the queue is full.'),
          504: openAiErrorReply('The request timed out in the queue.'),
        },
      },
    },
    '/v1/images/edits': {
      post: {
        operationId: 'openAiImagesEdits',
        summary: "OpenAI-style image edits (images.edit()): image-to-image, or inpainting where the mask (else the image) is transparent.",
        requestBody: { required: true, content: { 'multipart/form-data': { schema: ref('ImagesEditRequest') } } },
        responses: {
          200: { description: 'The images as base64 files.', content: json(ref('ImagesResponse')) },
          400: openAiErrorReply('Malformed form, a bad image or mask, an unsupported field or value, or a model that takes no images.'),
          404: openAiErrorReply('Unknown model (`code: "model_not_found"`).'),
          413: openAiErrorReply('A file is larger than 50 MB, or the body than the body limit.'),
          500: openAiErrorReply('The backend failed while running the request.'),
          503: openAiErrorReply('No text-to-image model is ready, or the queue is full.'),
          504: openAiErrorReply('The request timed out in the queue.'),
        },
      },
    },
    '/sdapi/v1/img2img': {
      post: {
        operationId: 'a1111Img2Img',
        summary: "Automatic1111's img2img: init_images, mask, denoising_strength and mask_blur beside txt2img's fields.",
        requestBody: { required: true, content: json(ref('Img2ImgRequest')) },
        responses: {
          200: { description: 'PNG images, the request as run, and `info`.', content: json(ref('Txt2ImgResponse')) },
          400: errorReply('An unknown field or sampler, a bad image or mask, a value sdserve cannot honour, or a model that takes no images.'),
          500: errorReply('The backend failed while running the request.'),
          503: errorReply('No text-to-image model is ready, or the queue is full.'),
        },
      },
    },
    '/sdapi/v1/txt2img': {
      post: {
        operationId: 'a1111Txt2Img',
        summary: "Automatic1111's txt2img: A1111's request fields; those sdserve does not implement are accepted only at A1111's defaults.",
        requestBody: { required: true, content: json(ref('Txt2ImgRequest')) },
        responses: {
          200: { description: 'PNG images, the request as run, and `info`.', content: json(ref('Txt2ImgResponse')) },
          400: errorReply('An unknown field or sampler, a value sdserve cannot honour, a refiner_checkpoint that is not the '
            + "model's refiner or a refiner_switch_at it cannot take, or a model that is not text-to-image."),
          500: errorReply('The backend failed while running the request.'),
          503: errorReply('No text-to-image model is ready, or the queue is full.'),
        },
      },
    },
    '/sdapi/v1/sd-models': {
      get: {
        operationId: 'a1111SdModels',
        summary: "The ready text-to-image models and the refiner each declares, in A1111's shape (a title is a refiner_checkpoint).",
        responses: { 200: { description: 'The models.', content: json({ type: 'array', items: { type: 'object' } }) } },
      },
    },
    '/sdapi/v1/samplers': {
      get: {
        operationId: 'a1111Samplers', summary: "A1111's sampler names that sdserve's schedulers implement.",
        responses: { 200: { description: 'The samplers.', content: json({ type: 'array', items: { type: 'object' } }) } },
      },
    },
    '/': {
      get: { operationId: 'root', summary: 'Redirects a browser to /playground.', responses: { 302: { description: 'To /playground.' } } },
    },
    '/favicon.ico': {
      get: {
        operationId: 'favicon', summary: "The playground's icon (SVG).",
        responses: { 200: { description: 'The icon.', content: { 'image/svg+xml': { schema: { type: 'string' } } } } },
      },
    },
    '/playground': {
      get: {
        operationId: 'playground', summary: 'The web playground (one HTML page, no external assets).',
        responses: { 200: { description: 'The page.', content: { 'text/html': { schema: { type: 'string' } } } } },
      },
    },
  }),
  components,
};

export interface RouteEntry {
  method: string;
  url: string;
}

const routesByApp = new WeakMap<FastifyInstance, RouteEntry[]>();

/**
 * Records every route registered on `app` from now on, plugins' included, so that tests can hold
 * the document to what is served (`registeredRoutes`).
 */
export function recordRoutes(app: FastifyInstance): void {
  const routes: RouteEntry[] = [];
  routesByApp.set(app, routes);
  app.addHook('onRoute', (route) => {
    for (const method of [route.method].flat()) routes.push({ method, url: route.url });
  });
}

/** The routes `recordRoutes` saw registered on `app` (complete once `app.ready()` has resolved). */
export function registeredRoutes(app: FastifyInstance): readonly RouteEntry[] {
  return routesByApp.get(app) ?? [];
}

/** Registers `GET /v2/openapi.json`. */
export function registerOpenApiRoute(app: FastifyInstance): void {
  const body = JSON.stringify(OPENAPI_DOCUMENT);
  app.get(OPENAPI_PATH, async (_request, reply) => reply.type('application/json; charset=utf-8').send(body));
}
