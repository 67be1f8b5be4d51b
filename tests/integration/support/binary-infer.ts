/** A minimal text-to-image client over Triton's binary tensor data extension, for tests. */
import { joinBytesElements } from '../../../src/protocol/binary-tensor.js';

export function bytesTensor(values: string[]): Buffer {
  return joinBytesElements(values.map((v) => Buffer.from(v, 'utf8')));
}

export interface ImageResult {
  status: number;
  error?: string;
  shape?: number[];
  image?: Buffer;
}

export async function inferImage(url: string, model: string, prompts: string[], parameters: Record<string, unknown>): Promise<ImageResult> {
  const prompt = bytesTensor(prompts);
  const header = Buffer.from(JSON.stringify({
    inputs: [{ name: 'prompt', datatype: 'BYTES', shape: [prompts.length, 1], parameters: { binary_data_size: prompt.length } }],
    outputs: [{ name: 'generated_image', parameters: { binary_data: true } }],
    parameters,
  }));
  const response = await fetch(`${url}/v2/models/${model}/infer`, {
    method: 'POST',
    headers: { 'Inference-Header-Content-Length': String(header.length), 'content-type': 'application/octet-stream' },
    body: Buffer.concat([header, prompt]),
  });
  const body = Buffer.from(await response.arrayBuffer());
  if (response.status !== 200) return { status: response.status, error: JSON.parse(body.toString()).error };
  const jsonLength = Number(response.headers.get('inference-header-content-length'));
  const meta = JSON.parse(body.subarray(0, jsonLength).toString());
  return { status: 200, shape: meta.outputs[0].shape, image: body.subarray(jsonLength) };
}

export function maxAbsDiff(a: Buffer, b: Buffer): number {
  if (a.length !== b.length) return Infinity;
  let max = 0;
  for (let i = 0; i < a.length; i += 1) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}
