/**
 * The client's streaming path: one request through `POST /v2/models/{m}/generate_stream`
 * (server-sent events), reporting each denoising step as it comes, then the images as PNGs
 * (`decodePngToRgb` turns one into RGB). Used when the client draws per-step progress bars.
 */
import { PNG } from 'pngjs';
import type { InferRequest } from '../core/types.js';
import { splitBytesElements } from '../protocol/binary-tensor.js';
import { IMAGE_INPUT, MASK_INPUT } from '../protocol/generation/index.js';
import { decodeBytesElements, errorMessage, InferHttpError, modelUrl } from './client-http.js';
import type { RgbImage } from './image-file.js';

export type StepListener = (step: number, steps: number) => void;

interface StreamEvent {
  progress?: { step: number; steps: number };
  error?: string;
  [output: string]: unknown;
}

/** The generate-extension body for an infer request: inputs as string lists, parameters flat. */
export function generateBody(request: InferRequest): Record<string, unknown> {
  const body: Record<string, unknown> = { ...request.parameters };
  for (const input of request.inputs) {
    // Input images travel as base64 files; prompts as text.
    const isFile = input.name === IMAGE_INPUT || input.name === MASK_INPUT;
    body[input.name] = isFile ? (splitBytesElements(input.data) ?? []).map((file) => file.toString('base64'))
      : decodeBytesElements(input.data);
  }
  return body;
}

/** Sends `request` to generate_stream and returns the PNG images of output `output`. */
export async function generateOverSse(
  baseUrl: string, request: InferRequest, output: string, onStep: StepListener,
): Promise<Buffer[]> {
  const response = await fetch(`${modelUrl(baseUrl, request)}/generate_stream`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(generateBody(request)),
  });
  if (!response.ok || response.body === null) {
    const body = Buffer.from(await response.arrayBuffer());
    throw new InferHttpError(response.status, errorMessage(body, response.statusText));
  }
  let result: StreamEvent | undefined;
  for await (const event of serverSentEvents(response.body)) {
    if (event.progress) onStep(event.progress.step, event.progress.steps);
    else result = event;
  }
  if (result === undefined) throw new Error('generate_stream ended without a result');
  if (typeof result.error === 'string') throw new InferHttpError(response.status, result.error);
  const images = result[output];
  if (!Array.isArray(images)) throw new Error(`generate_stream result has no '${output}' images`);
  return images.map((image) => Buffer.from(String(image), 'base64'));
}

async function* serverSentEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<StreamEvent> {
  const decoder = new TextDecoder();
  let pending = '';
  for await (const chunk of body) {
    pending += decoder.decode(chunk, { stream: true });
    let end: number;
    while ((end = pending.indexOf('\n\n')) >= 0) {
      const block = pending.slice(0, end);
      pending = pending.slice(end + 2);
      const data = block.split('\n').filter((line) => line.startsWith('data:'))
        .map((line) => line.slice('data:'.length).trimStart()).join('\n');
      if (data) yield JSON.parse(data) as StreamEvent;
    }
  }
}

export function decodePngToRgb(png: Buffer): RgbImage {
  const { width, height, data } = PNG.sync.read(png);
  const pixels = new Uint8Array(width * height * 3);
  for (let source = 0, target = 0; source < data.length; source += 4, target += 3) {
    pixels[target] = data[source];
    pixels[target + 1] = data[source + 1];
    pixels[target + 2] = data[source + 2];
  }
  return { width, height, pixels };
}
