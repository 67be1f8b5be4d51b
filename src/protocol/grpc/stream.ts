/**
 * ModelStreamInfer (Triton extension): every request on the stream is answered by
 * ModelStreamInferResponses, in completion order, each carrying either `infer_response` or
 * `error_message`: one for a normal model, one per response for a decoupled model (parameter
 * `triton_final_response` marks each request's last; with the request parameter
 * `triton_enable_empty_final_response`, a final flag the model sent alone comes as an empty
 * response). A failed request does not end the stream; its answer repeats the request's id (in
 * `infer_response.id`) so the client can tell which one failed. The stream ends once
 * the client has half-closed and every answer is written; a cancelled stream aborts the
 * requests still running.
 */
import { setMaxListeners } from 'node:events';
import type { ServerDuplexStream } from '@grpc/grpc-js';
import { parseBoolean } from '../../core/booleans.js';
import type { InferenceCore } from '../../core/inference-core.js';
import { invalidArg, quoted, SdserveError, toSdserveError } from '../../errors.js';
import type { ParameterValue, ProgressCallback, StreamedAnswer } from '../../core/types.js';
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

/** Triton's request parameter: a decoupled model's final flag sent alone reaches the client as an empty response. */
const EMPTY_FINAL_RESPONSE = 'triton_enable_empty_final_response';

function booleanParameter(value: ParameterValue | undefined, name: string): boolean {
  const parsed = value === undefined ? false : parseBoolean(value);
  if (parsed === undefined) throw invalidArg(`request parameter '${name}' must be a boolean (true or false), got ${quoted(value)}`);
  return parsed;
}

/**
 * One answer as the stream carries it, as Triton does: every response says whether it is its
 * request's last (`triton_final_response`); an error names its request; a final flag sent alone
 * is written only for a client that asked for empty final responses.
 */
function streamMessage(wire: WireModelInferRequest, answer: StreamedAnswer, emptyFinal: boolean): WireModelStreamInferResponse | undefined {
  const final = { triton_final_response: { bool_param: answer.final } };
  if (answer.response !== undefined) {
    const encoded = encodeInferResponse(answer.response);
    return { error_message: '', infer_response: { ...encoded, parameters: { ...encoded.parameters, ...final } } };
  }
  if (answer.error === undefined && !emptyFinal) return undefined;
  return {
    error_message: answer.error?.message ?? '',
    infer_response: { model_name: wire.model_name, model_version: wire.model_version, id: wire.id, parameters: final },
  };
}

/** Writes every answer to one request of the stream; a request that fails as a whole gets one error message. */
async function answerRequest(
  core: InferenceCore, wire: WireModelInferRequest, signal: AbortSignal,
  write: (message: WireModelStreamInferResponse) => void,
): Promise<void> {
  try {
    const decoded = decodeInferRequest(wire);
    const { stream_progress: streamProgress, [EMPTY_FINAL_RESPONSE]: emptyFinal, ...parameters } = decoded.parameters;
    const request = { ...decoded, parameters };
    const wantsProgress = booleanParameter(streamProgress, 'stream_progress');
    const wantsEmptyFinal = booleanParameter(emptyFinal, EMPTY_FINAL_RESPONSE);
    await core.inferStream(request, (answer) => {
      const message = streamMessage(wire, answer, wantsEmptyFinal);
      if (message !== undefined) write(message);
    }, signal, wantsProgress ? progressWriter(wire, write) : undefined);
  } catch (err) {
    write({ error_message: toSdserveError(err).message, infer_response: wire.id !== '' ? { id: wire.id } : null });
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
    void answerRequest(core, wire, controller.signal, write).then(() => {
      running -= 1;
      finishIfDone();
    });
  });
  call.on('end', () => { halfClosed = true; finishIfDone(); });
  const abort = () => controller.abort(new SdserveError('SDS_ERR_CANCELLED', 'the client cancelled the stream'));
  call.on('cancelled', abort);
  call.on('error', abort);
}
