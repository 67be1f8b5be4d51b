/**
 * A small InferenceCore for the HTTP route tests: model `echo` returns every input as an output
 * of the same name (or only the requested ones), `sum` adds INT32 inputs A and B into SUM,
 * `hang` waits for its AbortSignal, `boom` fails with a plain Error. Calls are recorded.
 */
import type { InferenceCore } from '../../../src/core/inference-core.js';
import { zeroStatistics, type ModelStatistics } from '../../../src/core/statistics.js';
import type {
  InferRequest, InferResponse, ModelMetadata, ModelStatus, ServerMetadata,
} from '../../../src/core/types.js';
import type { ModelConfig } from '../../../src/repository/model-config-types.js';
import { SdserveError } from '../../../src/errors.js';

const MODELS = ['echo', 'sum', 'hang', 'boom'];

export class FakeCore implements InferenceCore {
  live = true;
  ready = true;
  readonly inferCalls: InferRequest[] = [];
  readonly signals: AbortSignal[] = [];
  readonly loads: Array<{ name: string; config?: string }> = [];
  readonly unloads: string[] = [];
  /** Resolves with the signal once `hang` has been entered. */
  hangEntered: Promise<AbortSignal>;
  private enterHang!: (signal: AbortSignal) => void;

  constructor() {
    this.hangEntered = new Promise((resolve) => { this.enterHang = resolve; });
  }

  private check(name: string): void {
    if (!MODELS.includes(name)) throw new SdserveError('SDS_ERR_MODEL_NOT_FOUND', `unknown model '${name}'`);
  }

  serverMetadata(): ServerMetadata {
    return { name: 'sdserve', version: '0.1.0', extensions: ['binary_tensor_data', 'model_repository'] };
  }

  isLive(): boolean { return this.live; }

  isReady(): boolean { return this.ready; }

  isModelReady(name: string, version?: string): boolean {
    return MODELS.includes(name) && (version === undefined || version === '1');
  }

  modelMetadata(name: string, version?: string): ModelMetadata {
    this.check(name);
    if (version !== undefined && version !== '1') {
      throw new SdserveError('SDS_ERR_MODEL_NOT_FOUND', `model '${name}' has no version ${version}`);
    }
    return {
      name, versions: ['1'], platform: 'python',
      inputs: [{ name: 'A', datatype: 'INT32', shape: [-1] }],
      outputs: [{ name: 'SUM', datatype: 'INT32', shape: [-1] }],
    };
  }

  modelConfig(name: string): ModelConfig {
    this.check(name);
    return {
      name, platform: '', backend: 'python', version_policy: { latest: { num_versions: 1 } },
      max_batch_size: 0, input: [], output: [], instance_group: [], parameters: {},
      default_model_filename: 'model.py',
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
        this.enterHang(signal as AbortSignal);
        await new Promise((_resolve, reject) => {
          signal?.addEventListener('abort', () => reject(signal.reason), { once: true });
        });
        throw new Error('unreachable');
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

  statistics(name?: string, version?: string): ModelStatistics[] {
    if (name) {
      this.check(name);
      return [zeroStatistics(name, version ?? '1')];
    }
    return this.repositoryIndex(true).map((row) => zeroStatistics(row.name, row.version));
  }

  repositoryIndex(readyOnly: boolean): ModelStatus[] {
    const all: ModelStatus[] = [
      { name: 'echo', version: '1', state: 'READY', reason: '' },
      { name: 'broken', version: '1', state: 'UNAVAILABLE', reason: 'load failed' },
    ];
    return readyOnly ? all.filter((m) => m.state === 'READY') : all;
  }

  async loadModel(name: string, configOverride?: string): Promise<void> {
    if (name === 'broken') throw new SdserveError('SDS_ERR_CONFIG', `model 'broken': bad config`);
    this.loads.push({ name, ...(configOverride !== undefined && { config: configOverride }) });
  }

  async unloadModel(name: string): Promise<void> {
    this.check(name);
    this.unloads.push(name);
  }
}
