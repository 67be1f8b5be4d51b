/**
 * A small KServe v2 server for the client tests. It speaks the binary tensor data extension,
 * records what it received, and answers a UINT8 [B,H,W,3] `generated_image`. Model `broken`
 * answers HTTP 400 with a JSON error body; model `html_error` answers 502 with a plain text body.
 */
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';

export const IMAGE_HEIGHT = 16;
export const IMAGE_WIDTH = 24;
export const BROKEN_MODEL = 'broken';
export const BROKEN_MESSAGE = "model 'broken' is not ready";
export const HTML_ERROR_MODEL = 'html_error';
/** Requests for this model are answered only when `releaseHeld()` is called. */
export const HELD_MODEL = 'held';

export interface ReceivedTensor {
  name: string;
  datatype: string;
  shape: number[];
  parameters: Record<string, unknown>;
  data: Buffer;
}

export interface ReceivedRequest {
  url: string;
  headers: IncomingHttpHeaders;
  bodyLength: number;
  header: {
    inputs: ReceivedTensor[];
    outputs?: { name: string; parameters?: Record<string, unknown> }[];
    parameters?: Record<string, unknown>;
  };
}

export interface FakeInferServer {
  baseUrl: string;
  received: ReceivedRequest[];
  /** Answers every request of HELD_MODEL received so far, and later ones at once. */
  releaseHeld(): void;
  close(): Promise<void>;
}

/** The pixels the server returns for image `index` of a batch: a gradient offset per index. */
export function expectedPixels(index: number): Buffer {
  const pixels = Buffer.alloc(IMAGE_HEIGHT * IMAGE_WIDTH * 3);
  for (let y = 0; y < IMAGE_HEIGHT; y += 1) {
    for (let x = 0; x < IMAGE_WIDTH; x += 1) {
      const offset = (y * IMAGE_WIDTH + x) * 3;
      pixels[offset] = (x * 8 + index * 40) % 256;
      pixels[offset + 1] = (y * 12) % 256;
      pixels[offset + 2] = 128;
    }
  }
  return pixels;
}

export async function startFakeInferServer(): Promise<FakeInferServer> {
  const received: ReceivedRequest[] = [];
  let held: (() => void)[] | undefined = [];
  const server = createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks);
    const headerLength = Number(req.headers['inference-header-content-length']);
    const header = JSON.parse(body.toString('utf8', 0, headerLength)) as ReceivedRequest['header'];
    let offset = headerLength;
    for (const input of header.inputs) {
      const size = input.parameters.binary_data_size as number;
      input.data = body.subarray(offset, offset + size);
      offset += size;
    }
    received.push({ url: req.url ?? '', headers: req.headers, bodyLength: body.length, header });

    const model = /^\/v2\/models\/([^/]+)\/infer$/.exec(req.url ?? '')?.[1];
    if (model === BROKEN_MODEL) {
      res.writeHead(400, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ error: BROKEN_MESSAGE }));
      return;
    }
    if (model === HTML_ERROR_MODEL) {
      res.writeHead(502, { 'Content-Type': 'text/html' });
      res.end('<html>bad gateway</html>');
      return;
    }
    if (model === HELD_MODEL && held !== undefined) await new Promise<void>((resolve) => held?.push(resolve));
    const batch = header.inputs[0].shape[0];
    const data = Buffer.concat(Array.from({ length: batch }, (_, index) => expectedPixels(index)));
    const json = Buffer.from(JSON.stringify({
      model_name: model,
      model_version: '1',
      outputs: [{
        name: 'generated_image',
        datatype: 'UINT8',
        shape: [batch, IMAGE_HEIGHT, IMAGE_WIDTH, 3],
        parameters: { binary_data_size: data.length },
      }],
    }));
    res.writeHead(200, {
      'Content-Type': 'application/octet-stream',
      'Inference-Header-Content-Length': String(json.length),
    });
    res.end(Buffer.concat([json, data]));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    baseUrl: `http://127.0.0.1:${port}`,
    received,
    releaseHeld: () => {
      const waiting = held ?? [];
      held = undefined;
      for (const release of waiting) release();
    },
    close: () => new Promise<void>((resolve, reject) => {
      server.closeAllConnections();
      server.close((error) => (error ? reject(error) : resolve()));
    }),
  };
}
