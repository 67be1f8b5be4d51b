/**
 * The text lines the `client` command prints. The first two formats match the Triton Stable
 * Diffusion tutorial client's output so scripts that parse it keep working.
 */
import type { LatencyStats } from './client-stats.js';

/** Prints a float the way Python's `str(float)` does for ordinary values: `2.0`, not `2`. */
export function formatFloat(value: number): string {
  if (Number.isNaN(value)) return 'nan';
  if (!Number.isFinite(value)) return value > 0 ? 'inf' : '-inf';
  return Number.isInteger(value) ? value.toFixed(1) : String(value);
}

export function formatClientLine(client: number, throughput: number, averageLatency: number): string {
  return `Client: ${client} Throughput: ${formatFloat(throughput)} Avg. Latency: ${formatFloat(averageLatency)}`;
}

export function formatTotalLine(throughput: number, elapsedSeconds: number): string {
  return `Throughput: ${formatFloat(throughput)} Total Time: ${formatFloat(elapsedSeconds)}`;
}

export function formatLatencyLine(stats: LatencyStats): string {
  return `Latency p50: ${formatFloat(stats.p50)} p90: ${formatFloat(stats.p90)} p99: ${formatFloat(stats.p99)}`;
}

export function formatFailureLine(client: number, request: number, error: unknown): string {
  return `Client: ${client} request ${request} failed: ${describeFailure(error)}`;
}

/** `<status> <message>`; for errors with no HTTP status, the system code (ECONNREFUSED…) stands in. */
function describeFailure(error: unknown): string {
  if (!(error instanceof Error)) return `error ${String(error)}`;
  if ('status' in error && typeof error.status === 'number') return `${error.status} ${error.message}`;
  // fetch wraps socket errors: the useful code and message sit on `cause`.
  const cause = error.cause;
  if (cause instanceof Error && 'code' in cause && typeof cause.code === 'string') {
    return `${cause.code} ${cause.message || error.message}`;
  }
  return `error ${error.message}`;
}
