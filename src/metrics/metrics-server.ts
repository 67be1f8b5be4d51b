import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { collectDefaultMetrics, Registry } from 'prom-client';
import type { MetricsSource } from './metrics-source.js';
import { registerSdserveMetrics } from './sdserve-metrics.js';
import { registerTritonMetrics } from './triton-metrics.js';

export interface MetricsServer {
  port: number;
  close(): Promise<void>;
}

/** The registry of every metric sdserve serves, read from `source` at scrape time. */
export function buildMetricsRegistry(source: MetricsSource): Registry {
  const registry = new Registry();
  registerTritonMetrics(registry, source);
  registerSdserveMetrics(registry, source);
  collectDefaultMetrics({ register: registry });
  return registry;
}

/** Serves `GET /metrics` in Prometheus text format, as Triton's metrics port does. */
export async function startMetricsServer(source: MetricsSource, options: { host: string; port: number }): Promise<MetricsServer> {
  const registry = buildMetricsRegistry(source);
  const server = createServer((req, res) => {
    const path = (req.url ?? '').split('?')[0];
    if (req.method !== 'GET' || path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
      (err: unknown) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${String(err)}\n`),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise((resolve, reject) => {
      server.closeAllConnections();
      server.close((err) => (err ? reject(err) : resolve()));
    }),
  };
}
