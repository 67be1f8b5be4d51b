/**
 * ModelStreamInfer (Triton extension): every request on the stream is answered by one
 * ModelStreamInferResponse, in completion order, carrying either `infer_response` or
 * `error_message`. A failed request does not end the stream; its answer repeats the request's
 * id (in `infer_response.id`) so the client can tell which one failed. The stream ends once
 * the client has half-closed and every answer is written; a cancelled stream aborts the
 * requests still running.
 */
import type { ServerDuplexStream } from '@grpc/grpc-js';
import type { InferenceCore } from '../../core/inference-core.js';
import { SdserveError, toSdserveError } from '../../errors.js';
import { decodeInferRequest, encodeInferResponse } from './infer-codec.js';
import type { WireModelInferRequest, WireModelStreamInferResponse } from './wire-types.js';

async function answerOne(
  core: InferenceCore, wire: WireModelInferRequest, signal: AbortSignal,
): Promise<WireModelStreamInferResponse> {
  try {
    const response = await core.infer(decodeInferRequest(wire), signal);
    return { error_message: '', infer_response: encodeInferResponse(response) };
  } catch (err) {
    return { error_message: toSdserveError(err).message, infer_response: wire.id !== '' ? { id: wire.id } : null };
  }
}

export function serveInferStream(
  core: InferenceCore, call: ServerDuplexStream<WireModelInferRequest, WireModelStreamInferResponse>,
): void {
  const controller = new AbortController();
  let running = 0;
  let halfClosed = false;
  const finishIfDone = () => {
    if (halfClosed && running === 0 && !call.cancelled) call.end();
  };
  call.on('data', (wire: WireModelInferRequest) => {
    running += 1;
    void answerOne(core, wire, controller.signal).then((message) => {
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
