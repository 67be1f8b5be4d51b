/**
 * A small InferenceCore for the HTTP route tests: model `echo` returns every input as an output
 * of the same name (or only the requested ones), `sum` adds INT32 inputs A and B into SUM,
 * `hang` waits for its AbortSignal, `boom` fails with a plain Error. Calls are recorded.
 * The shared parts (flags, statistics, model control) live in tests/fixtures/fake-core-base.ts.
 */
import type { InferRequest, InferResponse, ModelMetadata } from '../../../src/core/types.js';
import type { ModelConfig } from '../../../src/repository/model-config-types.js';
import { SdserveError } from '../../../src/errors.js';
import { FakeCoreBase } from '../../fixtures/fake-core-base.js';

const MODELS = ['echo', 'sum', 'hang', 'boom'];

export class FakeCore extends FakeCoreBase {
  readonly signals: AbortSignal[] = [];

  constructor() {
    super(MODELS, ['binary_tensor_data', 'model_repository']);
  }

  /** `statistics` accepts any version of a known model. */
  protected override checkStatistics(name: string): void {
    this.check(name);
  }

  modelMetadata(name: string, version?: string): ModelMetadata {
    return this.tensorMetadata(name, version, 'INT32', [-1]);
  }

  modelConfig(name: string): ModelConfig {
    this.check(name);
    return {
      name, platform: '', backend: 'python', version_policy: { latest: { num_versions: 1 } },
      max_batch_size: 0, input: [], output: [], instance_group: [], parameters: {},
      default_model_filename: 'model.py', model_transaction_policy: { decoupled: false },
    };
  }

  async infer(request: InferRequest, signal?: AbortSignal): Promise<InferResponse> {
    this.inferCalls.push(request);
    if (signal) this.signals.push(signal);
    this.check(request.model_name);
    const base = { model_name: request.model_name, model_version: request.model_version ?? '1' };
    switch (request.model_name) {
      case 'boom':
        throw new Error('backend exploded');
      case 'hang':
        return this.hang(signal);
      case 'sum': {
        const [a, b] = ['A', 'B'].map((n) => request.inputs.find((t) => t.name === n));
        if (!a || !b) throw new SdserveError('SDS_ERR_INVALID_ARG', 'sum needs inputs A and B');
        const out = Buffer.alloc(a.data.length);
        for (let i = 0; i < out.length; i += 4) out.writeInt32LE(a.data.readInt32LE(i) + b.data.readInt32LE(i), i);
        return { ...base, outputs: [{ name: 'SUM', datatype: 'INT32', shape: a.shape, data: out }] };
      }
      default: {
        const wanted = request.outputs?.map((o) => o.name);
        const outputs = request.inputs.filter((t) => !wanted || wanted.includes(t.name));
        return { ...base, outputs: outputs.map(({ parameters: _p, ...t }) => t), parameters: { echoed: true } };
      }
    }
  }
}
