/**
 * The benchmark loop behind `sdserve client`: N concurrent clients each send R text-to-image
 * requests of B prompts, optionally save the images, and the run reports throughput and latency
 * in the Triton Stable Diffusion tutorial client's format.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import { availableParallelism } from 'node:os';
import { performance } from 'node:perf_hooks';
import type { InferRequest, InferResponse, Parameters } from '../core/types.js';
import { toInferRequest, type ImageModel } from '../protocol/generation/index.js';
import { inferOverHttp } from './client-http.js';
import { ImageWriterPool } from './client-image-writer.js';
import { decodePngToRgb, generateOverSse } from './client-stream.js';
import { parseServerUrl } from './client-options.js';
import { createClientProgress, type ClientProgress, type ProgressTarget } from './client-progress.js';
import {
  formatClientLine, formatFailureLine, formatLatencyLine, formatTotalLine,
} from './client-report.js';
import { mean, summarizeLatencies, type LatencyStats } from './client-stats.js';
import type { RgbImage } from './image-file.js';
import {
  poissonSendTimes, seededRandom, stepsPicker, type StepsOption,
} from './client-workload.js';

export const DEFAULT_MODEL = 'tiny_sd';
export const DEFAULT_PROMPT = 'a watercolor painting of a lighthouse on a rocky coast at sunset';
export const DEFAULT_URL = 'localhost:8000';
export const IMAGE_OUTPUT = 'generated_image';

export interface ClientOptions {
  model?: string;
  prompt?: string;
  negativePrompt?: string;
  /** Concurrent clients; each sends its requests one after another (closed loop). */
  clients?: number;
  /** Requests sent by each client. */
  requests?: number;
  /**
   * Open loop: requests leave as a Poisson process of this many requests per second in total
   * (each client a stream of `requestRate / clients`), whether or not earlier ones were answered.
   */
  requestRate?: number;
  staticBatchSize?: number;
  saveImage?: boolean;
  outputDir?: string;
  /** `host:port` or an `http(s)://` base URL. */
  url?: string;
  /** One step count, or a range each request draws from (seeded by `seed`). */
  steps?: StepsOption;
  seed?: number;
  guidanceScale?: number;
  scheduler?: string;
  width?: number;
  height?: number;
  /** Image-to-image: the input image file (PNG, JPEG, WebP) sent with every request. */
  image?: string;
  /** Inpainting: the mask file (white = repaint), with `image`. */
  mask?: string;
  /** Image-to-image and inpainting: how much of the schedule runs from the image (0..1]. */
  strength?: number;
  /** Progress bars on stderr; drawn only when stderr is a TTY. */
  progress?: boolean;
  /**
   * Bars over each request's denoising steps: requests go through the generate_stream endpoint
   * (server-sent progress, PNG images) instead of the binary infer route.
   */
  stepProgress?: boolean;
  /** Also write the summary (throughput, latency percentiles, counts) as JSON to this file. */
  summaryJson?: string;
  stdout?: NodeJS.WritableStream;
  stderr?: ProgressTarget;
}

export interface ClientResult {
  client: number;
  succeeded: number;
  failed: number;
  elapsedSeconds: number;
  /** Successful requests per second. */
  throughput: number;
  averageLatencySeconds: number;
  /** One entry per successful request, in the order sent. */
  latenciesSeconds: number[];
  savedImages: string[];
}

export interface ClientSummary {
  clients: ClientResult[];
  requests: number;
  succeeded: number;
  failed: number;
  elapsedSeconds: number;
  throughput: number;
  /** Over every successful request of every client. */
  latency: LatencyStats;
  savedImages: string[];
}

interface ResolvedRun {
  baseUrl: string;
  /** The request each client sends, by client then by request index. */
  plan: InferRequest[][];
  /** Open loop: when each client sends each request, in seconds from the start. */
  sendTimes: number[][] | undefined;
  clients: number;
  requests: number;
  batchSize: number;
  imageSaving: { outputDir: string; writer: ImageWriterPool } | undefined;
  progress: ClientProgress;
  stepProgress: boolean;
}

/**
 * Runs the benchmark and prints its report to `stdout` (failures to `stderr`). Failed requests
 * are counted in the summary, not thrown; the caller decides what they mean for the exit code.
 */
export async function runClient(options: ClientOptions = {}): Promise<ClientSummary> {
  // 1. Resolve defaults and build the one request every client repeats.
  const stdout = options.stdout ?? process.stdout;
  const stderr = options.stderr ?? process.stderr;
  const clients = options.clients ?? 1;
  const requests = options.requests ?? 1;
  const batchSize = options.staticBatchSize ?? 1;
  const baseUrl = parseServerUrl(options.url ?? DEFAULT_URL);
  // Separate streams: the arrival times of a seed stay the same whatever --steps is.
  const seed = options.seed ?? 0;
  const pickSteps = stepsPicker(options.steps, seededRandom(seed));
  const arrivals = seededRandom(seed ^ 0x9e3779b9);
  const inputFiles = await readInputFiles(options);
  const plan = Array.from({ length: clients }, () => Array.from({ length: requests }, () =>
    buildInferRequest({ ...options, steps: pickSteps() }, batchSize, inputFiles)));
  const rate = options.requestRate;
  const sendTimes = rate === undefined ? undefined
    : Array.from({ length: clients }, () => poissonSendTimes(requests, rate / clients, arrivals));
  let imageSaving: ResolvedRun['imageSaving'];
  if (options.saveImage) {
    const outputDir = options.outputDir ?? '.';
    await mkdir(outputDir, { recursive: true });
    const writers = Math.min(clients, Math.max(1, availableParallelism() - 1));
    imageSaving = { outputDir, writer: new ImageWriterPool(writers) };
  }
  const progress = createClientProgress({
    enabled: options.progress ?? true, stream: stderr, clients, requestsPerClient: requests,
    steps: options.stepProgress,
  });
  const run: ResolvedRun = {
    baseUrl, plan, sendTimes, clients, requests, batchSize, imageSaving, progress,
    stepProgress: options.stepProgress ?? false,
  };

  // 2. Run the clients concurrently.
  let results: ClientResult[];
  let elapsedSeconds: number;
  try {
    const start = performance.now();
    results = await Promise.all(
      Array.from({ length: clients }, (_, client) => runOneClient(run, client)),
    );
    elapsedSeconds = (performance.now() - start) / 1000;
  } finally {
    progress.stop();
    await imageSaving?.writer.close();
  }

  // 3. Summarize and report.
  const summary = summarize(results, elapsedSeconds);
  const lines = [
    ...results.map((r) => formatClientLine(r.client, r.throughput, r.averageLatencySeconds)),
    formatTotalLine(summary.throughput, summary.elapsedSeconds),
    formatLatencyLine(summary.latency),
  ];
  stdout.write(`${lines.join('\n')}\n`);
  if (options.summaryJson !== undefined) {
    await writeFile(options.summaryJson, `${JSON.stringify(summaryRecord(summary, options), null, 2)}\n`);
  }
  return summary;
}

/** The machine-readable summary written by `summaryJson`: the run's settings and its figures. */
function summaryRecord(summary: ClientSummary, options: ClientOptions): Record<string, unknown> {
  return {
    model: options.model ?? DEFAULT_MODEL,
    clients: summary.clients.length,
    request_rate: options.requestRate ?? null,
    steps: options.steps ?? null,
    requests: summary.requests,
    succeeded: summary.succeeded,
    failed: summary.failed,
    elapsed_seconds: summary.elapsedSeconds,
    throughput: summary.throughput,
    latency_seconds: summary.latency,
  };
}

/** One request: B copies of the prompt plus any generation parameters given, as the server's generate routes map them. */
export function buildInferRequest(
  options: Omit<ClientOptions, 'steps'> & { steps?: number }, batchSize: number, inputFiles: InputFiles = {},
): InferRequest {
  // The client saves pixels itself, so it asks for the image output whatever the model encodes.
  const model: ImageModel = {
    name: options.model ?? DEFAULT_MODEL, hasNegativePrompt: true, batched: true, imageOutput: IMAGE_OUTPUT, maxImages: batchSize,
    takesImageFiles: true,
  };
  const candidates: Record<string, string | number | undefined> = {
    steps: options.steps,
    seed: options.seed,
    guidance_scale: options.guidanceScale,
    scheduler: options.scheduler,
    height: options.height,
    width: options.width,
    strength: options.strength,
  };
  const parameters: Parameters = {};
  for (const [name, value] of Object.entries(candidates)) {
    if (value !== undefined) parameters[name] = value;
  }
  return toInferRequest(model, {
    prompts: new Array<string>(batchSize).fill(options.prompt ?? DEFAULT_PROMPT),
    ...(options.negativePrompt !== undefined && { negativePrompts: [options.negativePrompt] }),
    parameters,
    ...inputFiles,
  });
}

/** The input image and mask files of image-to-image and inpainting runs. */
export interface InputFiles {
  images?: Buffer[];
  masks?: Buffer[];
}

async function readInputFiles(options: ClientOptions): Promise<InputFiles> {
  if (options.mask !== undefined && options.image === undefined) throw new Error('--mask needs --image');
  return {
    ...(options.image !== undefined && { images: [await readFile(options.image)] }),
    ...(options.mask !== undefined && { masks: [await readFile(options.mask)] }),
  };
}

async function runOneClient(run: ResolvedRun, client: number): Promise<ClientResult> {
  const latencies: (number | undefined)[] = new Array<number | undefined>(run.requests);
  const savedImages: string[] = [];
  let failed = 0;
  const start = performance.now();
  const sendOne = async (request: number): Promise<void> => {
    const sentAt = performance.now();
    try {
      const sent = run.plan[client][request];
      // The latency ends when the answer is in; decoding and saving stay out of it but inside
      // the client's elapsed time, as in the tutorial client.
      let latencySeconds: number;
      let images: RgbImage[];
      if (run.stepProgress) {
        const pngs = await generateOverSse(run.baseUrl, sent, IMAGE_OUTPUT,
          (step, steps) => run.progress.step(client, step, steps));
        latencySeconds = (performance.now() - sentAt) / 1000;
        images = pngs.map(decodePngToRgb);
      } else {
        const response = await inferOverHttp(run.baseUrl, sent);
        latencySeconds = (performance.now() - sentAt) / 1000;
        images = imagesFromResponse(response, run.batchSize);
      }
      if (images.length !== run.batchSize) {
        throw new Error(`expected ${run.batchSize} images, got ${images.length}`);
      }
      if (run.imageSaving !== undefined) {
        savedImages.push(...await saveImages(run.imageSaving, client, request, images));
      }
      latencies[request] = latencySeconds;
      run.progress.advance(client, false);
    } catch (error) {
      failed += 1;
      run.progress.log(formatFailureLine(client, request, error));
      run.progress.advance(client, true);
    }
  };
  const sendTimes = run.sendTimes?.[client];
  if (sendTimes === undefined) {
    for (let request = 0; request < run.requests; request += 1) await sendOne(request);
  } else {
    const pending: Promise<void>[] = [];
    for (const [request, sendAt] of sendTimes.entries()) {
      const wait = start + sendAt * 1000 - performance.now();
      if (wait > 0) await sleep(wait);
      pending.push(sendOne(request));
    }
    await Promise.all(pending);
  }
  const elapsedSeconds = (performance.now() - start) / 1000;
  const latenciesSeconds = latencies.filter((latency): latency is number => latency !== undefined);
  return {
    client,
    succeeded: latenciesSeconds.length,
    failed,
    elapsedSeconds,
    throughput: latenciesSeconds.length / elapsedSeconds,
    averageLatencySeconds: mean(latenciesSeconds),
    latenciesSeconds,
    savedImages,
  };
}

/** Splits the UINT8 [B,H,W,3] output into B images, checking it is what was asked for. */
export function imagesFromResponse(response: InferResponse, batchSize: number): RgbImage[] {
  const output = response.outputs.find((tensor) => tensor.name === IMAGE_OUTPUT);
  if (output === undefined) throw new Error(`response has no '${IMAGE_OUTPUT}' output`);
  const [batch, height, width, channels] = output.shape;
  if (output.datatype !== 'UINT8' || output.shape.length !== 4 || batch !== batchSize || channels !== 3) {
    throw new Error(
      `'${IMAGE_OUTPUT}' must be UINT8 [${batchSize},H,W,3], got ${output.datatype} [${output.shape.join(',')}]`,
    );
  }
  const imageBytes = height * width * 3;
  if (output.data.length !== batch * imageBytes) {
    throw new Error(
      `'${IMAGE_OUTPUT}' of shape [${output.shape.join(',')}] needs ${batch * imageBytes} bytes, got ${output.data.length}`,
    );
  }
  return Array.from({ length: batch }, (_, index) => ({
    width,
    height,
    pixels: output.data.subarray(index * imageBytes, (index + 1) * imageBytes),
  }));
}

/** `client_{i}_generated_image_{j}.jpg`, with a `_{k}` batch index only when B > 1. */
export function imageFileName(client: number, request: number, batchIndex: number, batchSize: number): string {
  const batchSuffix = batchSize > 1 ? `_${batchIndex}` : '';
  return `client_${client}_${IMAGE_OUTPUT}_${request}${batchSuffix}.jpg`;
}

async function saveImages(
  { outputDir, writer }: NonNullable<ResolvedRun['imageSaving']>,
  client: number, request: number, images: RgbImage[],
): Promise<string[]> {
  const paths = images.map((_, index) =>
    join(outputDir, imageFileName(client, request, index, images.length)));
  await Promise.all(images.map((image, index) => writer.write(paths[index], image)));
  return paths;
}

function summarize(results: ClientResult[], elapsedSeconds: number): ClientSummary {
  const latencies = results.flatMap((r) => r.latenciesSeconds);
  const succeeded = latencies.length;
  const failed = results.reduce((total, r) => total + r.failed, 0);
  return {
    clients: results,
    requests: succeeded + failed,
    succeeded,
    failed,
    elapsedSeconds,
    throughput: succeeded / elapsedSeconds,
    latency: summarizeLatencies(latencies),
    savedImages: results.flatMap((r) => r.savedImages),
  };
}
