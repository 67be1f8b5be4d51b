/**
 * ModelStatistics. The core does not keep statistics yet; the hook it is expected to grow is
 * `StatisticsSource.statistics`. Until then every ready model version reports zeros, which is
 * what Triton reports for a model that has served nothing.
 */
import type { InferenceCore } from '../../core/inference-core.js';

export interface StatisticDuration {
  count: number;
  /** Total nanoseconds. */
  ns: number;
}

/** Triton's cumulative per-stage durations (field names as in grpc_service.proto). */
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

/** One model version's statistics: the ModelStatistics message and the HTTP stats JSON alike. */
export interface ModelStatistics {
  name: string;
  version: string;
  /** Milliseconds since the epoch of the last request; 0 when none. */
  last_inference: number;
  /** Requests served (a batch of n counts n). */
  inference_count: number;
  /** Model executions (a batch counts once). */
  execution_count: number;
  inference_stats: InferStatistics;
  batch_stats: InferBatchStatistics[];
}

/**
 * The hook the gRPC front end uses when the core has it: statistics of `name` (empty or absent:
 * every model) at `version` (empty or absent: every loaded version). Throws SdserveError
 * SDS_ERR_MODEL_NOT_FOUND for an unknown model, like `modelMetadata`.
 */
export interface StatisticsSource {
  statistics?(name?: string, version?: string): ModelStatistics[];
}

const zero = (): StatisticDuration => ({ count: 0, ns: 0 });

export function zeroStatistics(name: string, version: string): ModelStatistics {
  return {
    name, version, last_inference: 0, inference_count: 0, execution_count: 0,
    inference_stats: {
      success: zero(), fail: zero(), queue: zero(), compute_input: zero(), compute_infer: zero(),
      compute_output: zero(), cache_hit: zero(), cache_miss: zero(),
    },
    batch_stats: [],
  };
}

/** The core's statistics when it has the hook; zeros for the ready versions otherwise. */
export function modelStatistics(core: InferenceCore & StatisticsSource, name: string, version: string): ModelStatistics[] {
  if (typeof core.statistics === 'function') return core.statistics(name || undefined, version || undefined);
  if (name === '') return core.repositoryIndex(true).map((row) => zeroStatistics(row.name, row.version));
  const metadata = core.modelMetadata(name, version || undefined); // throws for an unknown model
  return (version !== '' ? [version] : metadata.versions).map((v) => zeroStatistics(name, v));
}
