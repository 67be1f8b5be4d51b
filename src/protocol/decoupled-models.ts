/**
 * Triton's endpoints that answer a request with one response refuse decoupled models, which may
 * send any number: those are served by the gRPC ModelStreamInfer RPC and `generate_stream`
 * (and `generate`, for exactly one response).
 */
import type { InferenceCore } from '../core/inference-core.js';
import { SdserveError } from '../errors.js';

/**
 * Throws SDS_ERR_UNSUPPORTED with Triton's message (`endpoint`: "HTTP end point", "ModelInfer
 * RPC") when the model asked for is decoupled. A model that cannot be resolved passes: the
 * inference itself reports that.
 */
export function refuseDecoupled(core: InferenceCore, endpoint: string, name: string, version?: string): void {
  let decoupled: boolean;
  try {
    decoupled = core.modelConfig(name, version || undefined).model_transaction_policy?.decoupled === true;
  } catch {
    return;
  }
  if (decoupled) {
    throw new SdserveError('SDS_ERR_UNSUPPORTED', `${endpoint} doesn't support models with decoupled transaction policy`);
  }
}
