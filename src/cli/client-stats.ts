/**
 * Latency statistics for the client benchmark. Every function returns NaN for an empty sample,
 * so a run in which every request failed still produces a report instead of a crash.
 */

export interface LatencyStats {
  mean: number;
  p50: number;
  p90: number;
  p99: number;
}

export function mean(values: readonly number[]): number {
  if (values.length === 0) return NaN;
  let sum = 0;
  for (const value of values) sum += value;
  return sum / values.length;
}

/**
 * The `percent`-th percentile, interpolating linearly between the two nearest ranks (the same
 * definition as NumPy's default), so p50 of an even-sized sample is the midpoint of its middle pair.
 */
export function percentile(values: readonly number[], percent: number): number {
  if (!(percent >= 0 && percent <= 100)) {
    throw new RangeError(`percentile: percent must be within [0, 100], got ${percent}`);
  }
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = (percent / 100) * (sorted.length - 1);
  const lower = Math.floor(rank);
  const upper = Math.ceil(rank);
  return sorted[lower] + (sorted[upper] - sorted[lower]) * (rank - lower);
}

export function summarizeLatencies(values: readonly number[]): LatencyStats {
  return {
    mean: mean(values),
    p50: percentile(values, 50),
    p90: percentile(values, 90),
    p99: percentile(values, 99),
  };
}
