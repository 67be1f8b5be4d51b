import type { ModelStatistics } from '../core/statistics.js';

/** What the metrics read at scrape time; the data plane provides all of it. */
export interface MetricsSource {
  statistics(): ModelStatistics[];
  backendRestarts(): Array<{ name: string; version: string; restarts: number }>;
  /** Requests waiting for an instance, per loaded model version. */
  pendingRequests(): Array<{ name: string; version: string; pending: number }>;
  /** The config of a loaded version; its backend tells which models generate images. */
  modelConfig(name: string, version?: string): { backend: string };
}
