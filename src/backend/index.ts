export {
  BackendProcess,
  type BackendLogger,
  type BackendProcessEvents,
  type BackendProcessOptions,
  type BackendSpareSource,
  type BackendSpawnOptions,
  type AnswerListener,
  type ProgressListener,
} from './backend-process.js';
export { BackendSpares, PREIMPORTED_MODULES } from './backend-spares.js';
export {
  encodeFrame, FrameDecoder, MalformedFrameError, MAX_FRAME_LENGTH, HEADER_BYTES,
  type Frame, type FrameHandlers,
} from './frame.js';
export * from './messages.js';
export { PAYLOAD_ALIGNMENT, PayloadBuilder, tensorFromPayload } from './tensor-payload.js';
