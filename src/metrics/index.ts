export { parseGpuMemory, readGpuMemory, type GpuMemory } from './gpu-memory.js';
export { buildMetricsRegistry, startMetricsServer, type MetricsServer } from './metrics-server.js';
export type { MetricsSource } from './metrics-source.js';
