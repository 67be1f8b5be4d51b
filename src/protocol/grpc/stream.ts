/**
 * ModelStreamInfer (Triton extension): every request on the stream is answered by one
 * ModelStreamInferResponse, in completion order, carrying either `infer_response` or
 * `error_message`. A failed request does not end the stream; its answer repeats the request's
 * id (in `infer_response.id`) so the client can tell which one failed. The stream ends once
 * the client has half-closed and every answer is written; a cancelled stream aborts the
 * requests still running.
 */
import { setMaxListeners } from 'node:events';
import type { ServerDuplexStream } from '@grpc/grpc-js';
import { parseBoolean } from '../../core/booleans.js';
import type { InferenceCore } from '../../core/inference-core.js';
import { invalidArg, SdserveError, toSdserveError } from '../../errors.js';
import type { ProgressCallback } from '../../core/types.js';
import { decodeInferRequest, encodeInferResponse, encodeParameters } from './infer-codec.js';
import type { WireModelInferRequest, WireModelStreamInferResponse } from './wire-types.js';

/**
 * With the request parameter `stream_progress: true`, a request also gets a response per
 * denoising step before its final one: parameters `sdserve_progress: true`, `step`, `steps`,
 * `elapsed_ms` and `eta_ms`, and on the steps it asked previews for (`preview`), an output
 * `preview` (UINT8 [1, H, W, 3]).
 */
function progressWriter(wire: WireModelInferRequest, write: (message: WireModelStreamInferResponse) => void): ProgressCallback {
  return ({ preview, ...progress }) => write({
    error_message: '',
    infer_response: {
      model_name: wire.model_name, model_version: wire.model_version, id: wire.id,
      outputs: preview ? [{ name: 'preview', datatype: 'UINT8', shape: [1, ...preview.shape], parameters: {} }] : [],
      raw_output_contents: preview ? [preview.data] : [],
      parameters: encodeParameters({ sdserve_progress: true, ...progress }),
    },
  });
}

async function answerOne(
  core: InferenceCore, wire: WireModelInferRequest, signal: AbortSignal,
  write: (message: WireModelStreamInferResponse) => void,
): Promise<WireModelStreamInferResponse> {
  try {
    const decoded = decodeInferRequest(wire);
    const { stream_progress: streamProgress, ...parameters } = decoded.parameters;
    const request = { ...decoded, parameters };
    const wantsProgress = streamProgress !== undefined && parseBoolean(streamProgress);
    if (wantsProgress === undefined) {
      throw invalidArg(`request parameter 'stream_progress' must be a boolean (true or false), got ${JSON.stringify(streamProgress)}`);
    }
    const response = await core.infer(request, signal, wantsProgress ? progressWriter(wire, write) : undefined);
    return { error_message: '', infer_response: encodeInferResponse(response) };
  } catch (err) {
    return { error_message: toSdserveError(err).message, infer_response: wire.id !== '' ? { id: wire.id } : null };
  }
}

export function serveInferStream(
  core: InferenceCore, call: ServerDuplexStream<WireModelInferRequest, WireModelStreamInferResponse>,
): void {
  const controller = new AbortController();
  // Every request of the stream listens to this one signal, however many there are.
  setMaxListeners(0, controller.signal);
  let running = 0;
  let halfClosed = false;
  const finishIfDone = () => {
    if (halfClosed && running === 0 && !call.cancelled) call.end();
  };
  call.on('data', (wire: WireModelInferRequest) => {
    running += 1;
    const write = (message: WireModelStreamInferResponse) => { if (!call.cancelled) call.write(message); };
    void answerOne(core, wire, controller.signal, write).then((message) => {
      running -= 1;
      if (!call.cancelled) call.write(message);
      finishIfDone();
    });
  });
  call.on('end', () => { halfClosed = true; finishIfDone(); });
  const abort = () => controller.abort(new SdserveError('SDS_ERR_CANCELLED', 'the client cancelled the stream'));
  call.on('cancelled', abort);
  call.on('error', abort);
}
