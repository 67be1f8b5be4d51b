import { Counter, Gauge, type Registry } from 'prom-client';
import type { ModelStatistics } from '../core/statistics.js';
import type { MetricsSource } from './metrics-source.js';

type Read = (stats: ModelStatistics) => number;

const microseconds = (ns: number) => Math.floor(ns / 1000);

/**
 * Triton's per-model counters (its metrics guide, "Inference Request Metrics"), each labelled
 * `model` and `version`. Durations are the successful requests' cumulative microseconds.
 */
const TRITON_COUNTERS: Array<[name: string, help: string, read: Read]> = [
  ['nv_inference_request_success', 'Number of successful inference requests, all batch sizes',
    (s) => s.inference_stats.success.count],
  ['nv_inference_request_failure', 'Number of failed inference requests, all batch sizes',
    (s) => s.inference_stats.fail.count],
  ['nv_inference_count', 'Number of inferences performed (a request of batch n counts n)',
    (s) => s.inference_count],
  ['nv_inference_exec_count', 'Number of model executions performed (a batch counts once)',
    (s) => s.execution_count],
  ['nv_inference_request_duration_us', 'Cumulative inference request duration in microseconds',
    (s) => microseconds(s.inference_stats.success.ns)],
  ['nv_inference_queue_duration_us', 'Cumulative inference queuing duration in microseconds',
    (s) => microseconds(s.inference_stats.queue.ns)],
  ['nv_inference_compute_input_duration_us', 'Cumulative compute input duration in microseconds',
    (s) => microseconds(s.inference_stats.compute_input.ns)],
  ['nv_inference_compute_infer_duration_us', 'Cumulative compute inference duration in microseconds',
    (s) => microseconds(s.inference_stats.compute_infer.ns)],
  ['nv_inference_compute_output_duration_us', 'Cumulative compute output duration in microseconds',
    (s) => microseconds(s.inference_stats.compute_output.ns)],
];

/**
 * Registers the `nv_inference_*` counters. The statistics are already cumulative, so each scrape
 * replaces the counters' values with a fresh reading rather than incrementing them.
 */
export function registerTritonMetrics(registry: Registry, source: MetricsSource): void {
  for (const [name, help, read] of TRITON_COUNTERS) {
    new Counter({
      name, help, labelNames: ['model', 'version'], registers: [registry],
      collect() {
        this.reset();
        for (const stats of source.statistics()) this.inc({ model: stats.name, version: stats.version }, read(stats));
      },
    });
  }
}

/**
 * Triton's `nv_inference_pending_request_count` gauge: requests waiting for an instance, per model
 * version. The signal for autoscaling replicas (the Helm chart's HPA and KEDA options).
 */
export function registerPendingRequests(registry: Registry, source: MetricsSource): void {
  new Gauge({
    name: 'nv_inference_pending_request_count', help: 'Instantaneous number of pending requests awaiting execution per-model',
    labelNames: ['model', 'version'], registers: [registry],
    collect() {
      this.reset();
      for (const row of source.pendingRequests()) this.set({ model: row.name, version: row.version }, row.pending);
    },
  });
}
