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
