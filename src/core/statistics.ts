/**
 * Triton's per-model-version statistics (the ModelStatistics message of the statistics
 * extension): cumulative counts and nanoseconds per stage, and per batch size.
 */

export interface StatisticDuration {
  count: number;
  /** Total nanoseconds. */
  ns: number;
}

export interface InferStatistics {
  success: StatisticDuration;
  fail: StatisticDuration;
  queue: StatisticDuration;
  compute_input: StatisticDuration;
  compute_infer: StatisticDuration;
  compute_output: StatisticDuration;
  cache_hit: StatisticDuration;
  cache_miss: StatisticDuration;
}

export interface InferBatchStatistics {
  batch_size: number;
  compute_input: StatisticDuration;
  compute_infer: StatisticDuration;
  compute_output: StatisticDuration;
}

export interface ModelStatistics {
  name: string;
  version: string;
  /** Milliseconds since the epoch of the last request; 0 when none. */
  last_inference: number;
  /** Inferences served (a request of batch n counts n). */
  inference_count: number;
  /** Model executions (a batch counts once). */
  execution_count: number;
  inference_stats: InferStatistics;
  batch_stats: InferBatchStatistics[];
}

import type { StageTimings } from './stage-timings.js';

const zero = (): StatisticDuration => ({ count: 0, ns: 0 });
const NO_STAGES: StageTimings = { inputNs: 0, outputNs: 0 };
const add = (stat: StatisticDuration, ns: number) => { stat.count += 1; stat.ns += ns; };

function addStages(into: Pick<InferStatistics, 'compute_input' | 'compute_infer' | 'compute_output'>, computeNs: number,
  stages: StageTimings): void {
  add(into.compute_input, stages.inputNs);
  add(into.compute_infer, Math.max(0, computeNs - stages.inputNs - stages.outputNs));
  add(into.compute_output, stages.outputNs);
}

/** Statistics of a version that has served nothing. */
export function zeroStatistics(name: string, version: string): ModelStatistics {
  return new StatisticsRecorder().snapshot(name, version);
}

/** Accumulates one model version's statistics. */
export class StatisticsRecorder {
  private lastInference = 0;
  private inferenceCount = 0;
  private executionCount = 0;
  private readonly stats: InferStatistics = {
    success: zero(), fail: zero(), queue: zero(), compute_input: zero(), compute_infer: zero(),
    compute_output: zero(), cache_hit: zero(), cache_miss: zero(),
  };
  private readonly batches = new Map<number, InferBatchStatistics>();

  /**
   * A request that got its response: its whole time, and its share of the stages. `stages` splits
   * the compute time: the core's input encoding and output decoding, the backend's the rest.
   */
  recordSuccess(batchSize: number, requestNs: number, queueNs: number, computeNs: number,
    stages: StageTimings = NO_STAGES): void {
    this.lastInference = Date.now();
    this.inferenceCount += batchSize;
    add(this.stats.success, requestNs);
    add(this.stats.queue, queueNs);
    addStages(this.stats, computeNs, stages);
  }

  recordFailure(requestNs: number): void {
    this.lastInference = Date.now();
    add(this.stats.fail, requestNs);
  }

  /** One execution of the model on a batch of `batchSize` inferences. */
  recordExecution(batchSize: number, computeNs: number, stages: StageTimings = NO_STAGES): void {
    this.executionCount += 1;
    let batch = this.batches.get(batchSize);
    if (!batch) {
      batch = { batch_size: batchSize, compute_input: zero(), compute_infer: zero(), compute_output: zero() };
      this.batches.set(batchSize, batch);
    }
    addStages(batch, computeNs, stages);
  }

  snapshot(name: string, version: string): ModelStatistics {
    return structuredClone({
      name,
      version,
      last_inference: this.lastInference,
      inference_count: this.inferenceCount,
      execution_count: this.executionCount,
      inference_stats: this.stats,
      batch_stats: [...this.batches.values()].sort((a, b) => a.batch_size - b.batch_size),
    });
  }
}
