/**
 * What varies between the requests of one `sdserve client` run: the step count (one value or a
 * uniform draw from a range) and, in open-loop mode, when each request is sent (Poisson arrivals).
 * Draws come from a seeded generator, so two runs with the same options send the same workload.
 */

export interface StepRange {
  min: number;
  max: number;
}

/** `--steps`: one count for every request, or a range each request draws from. */
export type StepsOption = number | StepRange;

/** A small seeded PRNG (mulberry32): uniform floats in [0, 1). */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The step count of each request, drawn uniformly (inclusive) when `steps` is a range. */
export function stepsPicker(steps: StepsOption | undefined, random: () => number): () => number | undefined {
  if (steps === undefined || typeof steps === 'number') return () => steps;
  const span = steps.max - steps.min + 1;
  return () => steps.min + Math.floor(random() * span);
}

/**
 * Send times in seconds from the start for `count` requests arriving as a Poisson process of
 * `rate` requests per second (exponential gaps; the first request leaves at 0).
 */
export function poissonSendTimes(count: number, rate: number, random: () => number): number[] {
  const times: number[] = [];
  let at = 0;
  for (let index = 0; index < count; index += 1) {
    if (index > 0) at += -Math.log(1 - random()) / rate;
    times.push(at);
  }
  return times;
}
