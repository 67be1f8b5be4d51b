import type { CapabilitiesMeta } from '../backend/messages.js';
import type { ModelStatistics } from '../core/statistics.js';

/** What the metrics read at scrape time; the data plane provides all of it. */
export interface MetricsSource {
  statistics(): ModelStatistics[];
  backendRestarts(): Array<{ name: string; version: string; restarts: number }>;
  /** Requests waiting for an instance, per loaded model version. */
  pendingRequests(): Array<{ name: string; version: string; pending: number }>;
  /** What a loaded version's backend declared: it tells which models generate images. */
  modelCapabilities(name: string, version?: string): CapabilitiesMeta | undefined;
}

/**
 * `source` with its statistics read once per scrape: a dozen counters read them, and each reading
 * copies every model version's statistics. prom-client runs every metric's `collect` in the same
 * turn of the event loop, so a reading is kept until the next turn; every counter of a scrape
 * then shows the same moment.
 */
export function readOncePerScrape(source: MetricsSource): MetricsSource {
  let reading: ModelStatistics[] | undefined;
  return {
    statistics() {
      if (reading === undefined) {
        reading = source.statistics();
        setImmediate(() => { reading = undefined; });
      }
      return reading;
    },
    backendRestarts: () => source.backendRestarts(),
    pendingRequests: () => source.pendingRequests(),
    modelCapabilities: (name, version) => source.modelCapabilities(name, version),
  };
}
