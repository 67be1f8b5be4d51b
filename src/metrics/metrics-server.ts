import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { collectDefaultMetrics, Registry } from 'prom-client';
import { bearerToken, secretsEqual } from '../protocol/access-policy.js';
import { closeSilentConnections } from '../protocol/silent-connections.js';
import { readOncePerScrape, type MetricsSource } from './metrics-source.js';
import { registerSdserveMetrics } from './sdserve-metrics.js';
import { registerPendingRequests, registerTritonMetrics } from './triton-metrics.js';

export interface MetricsServer {
  port: number;
  close(): Promise<void>;
}

export interface MetricsServerOptions {
  host: string;
  port: number;
  /** When set, scrapes need `Authorization: Bearer <apiKey>` (Prometheus' `authorization` setting). */
  apiKey?: string;
  /** PEM certificate and key: serve HTTPS (the HTTP service's certificate). */
  tls?: { cert: Buffer; key: Buffer };
  /** Open connections beyond this are closed on accept. Default: 64 (scrapers are few). */
  maxConnections?: number;
}

/** Scrapers are few; the cap keeps idle connections from taking every file descriptor. */
export const DEFAULT_METRICS_MAX_CONNECTIONS = 64;
const HEADERS_TIMEOUT_MS = 30_000;

/** The registry of every metric sdserve serves, read from `source` at scrape time. */
export function buildMetricsRegistry(dataPlane: MetricsSource): Registry {
  const registry = new Registry();
  const source = readOncePerScrape(dataPlane);
  registerTritonMetrics(registry, source);
  registerPendingRequests(registry, source);
  registerSdserveMetrics(registry, source);
  collectDefaultMetrics({ register: registry });
  return registry;
}

function authorized(req: IncomingMessage, apiKey: string | undefined): boolean {
  if (apiKey === undefined) return true;
  const token = bearerToken(req.headers.authorization);
  return token !== undefined && secretsEqual(token, apiKey);
}

/** Serves `GET /metrics` in Prometheus text format, as Triton's metrics port does. */
export async function startMetricsServer(source: MetricsSource, options: MetricsServerOptions): Promise<MetricsServer> {
  const registry = buildMetricsRegistry(source);
  const handler = (req: IncomingMessage, res: ServerResponse) => {
    if (!authorized(req, options.apiKey)) {
      res.writeHead(401, { 'content-type': 'text/plain', 'www-authenticate': 'Bearer' }).end('this server requires an API key\n');
      return;
    }
    const path = (req.url ?? '').split('?')[0];
    if (req.method !== 'GET' || path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
      (err: unknown) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${String(err)}\n`),
    );
  };
  const timeouts = { headersTimeout: HEADERS_TIMEOUT_MS, requestTimeout: 60_000, keepAliveTimeout: 5000 };
  const server = options.tls === undefined
    ? createHttpServer(timeouts, handler)
    : createHttpsServer({ ...timeouts, ...options.tls }, handler);
  server.maxConnections = options.maxConnections ?? DEFAULT_METRICS_MAX_CONNECTIONS;
  closeSilentConnections(server, HEADERS_TIMEOUT_MS, options.tls !== undefined);
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
