/**
 * Where a response's compute time went outside the model, kept beside the response (not in it):
 * the core's encoding of the request's inputs into the backend's frame and writing it (Triton's
 * compute_input), and its decoding of the response's output tensors (compute_output). The rest of
 * the compute time is the backend's (compute_infer).
 */
import type { InferResponse } from './types.js';

export interface StageTimings {
  inputNs: number;
  outputNs: number;
}

const NONE: StageTimings = { inputNs: 0, outputNs: 0 };
const timings = new WeakMap<InferResponse, StageTimings>();

export function setStageTimings(response: InferResponse, stages: StageTimings): void {
  timings.set(response, stages);
}

/** The response's stage timings; zero for a response that did not come from a backend process. */
export function stageTimings(response: InferResponse | undefined): StageTimings {
  return (response !== undefined && timings.get(response)) || NONE;
}
