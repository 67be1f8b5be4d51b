import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect } from 'node:net';
import { describe, it, type TestContext } from 'node:test';
import { startMetricsServer, type MetricsServerOptions } from '../../../src/metrics/metrics-server.js';
import { zeroStatistics } from '../../../src/core/statistics.js';
import type { MetricsSource } from '../../../src/metrics/metrics-source.js';

const NO_MODELS: MetricsSource = {
  statistics: () => [],
  backendRestarts: () => [],
  pendingRequests: () => [],
  modelCapabilities: () => undefined,
};

async function start(t: TestContext, options: Partial<MetricsServerOptions> = {}) {
  const server = await startMetricsServer(NO_MODELS, { host: '127.0.0.1', port: 0, ...options });
  t.after(() => server.close());
  return `http://127.0.0.1:${server.port}/metrics`;
}

describe('metrics service', () => {
  it('needs the API key when the server has one', async (t) => {
    const url = await start(t, { apiKey: 'sk-metrics-key' });
    const refused = await fetch(url);
    assert.equal(refused.status, 401);
    assert.equal(refused.headers.get('www-authenticate'), 'Bearer');
    const scraped = await fetch(url, { headers: { authorization: 'Bearer sk-metrics-key' } });
    assert.equal(scraped.status, 200);
    assert.match(await scraped.text(), /process_cpu_seconds_total/);
  });

  it('closes a connection over its cap and keeps the others', async (t) => {
    const url = await start(t, { maxConnections: 2 });
    const port = Number(new URL(url).port);
    const sockets = await Promise.all(Array.from({ length: 3 }, async () => {
      const socket = connect(port, '127.0.0.1');
      socket.on('error', () => undefined);
      await once(socket, 'connect');
      return socket;
    }));
    t.after(() => sockets.forEach((socket) => socket.destroy()));
    await Promise.race([once(sockets[0]!, 'close'), once(sockets[1]!, 'close'), once(sockets[2]!, 'close')]);
    assert.deepEqual(sockets.map((socket) => socket.readyState), ['open', 'open', 'closed']);
  });

  it('reads the statistics once per scrape, and afresh for the next', async (t) => {
    let readings = 0;
    const stats = zeroStatistics('m', '1');
    const source: MetricsSource = {
      ...NO_MODELS,
      statistics: () => {
        readings += 1;
        stats.inference_count = readings;
        return [structuredClone(stats)];
      },
      modelCapabilities: () => ({ tasks: ['text_to_image'], batching: 'step', max_images: 1, parameters: {}, config_parameters: [] }),
    };
    const server = await startMetricsServer(source, { host: '127.0.0.1', port: 0 });
    t.after(() => server.close());
    const url = `http://127.0.0.1:${server.port}/metrics`;
    const first = await (await fetch(url)).text();
    assert.equal(readings, 1);
    // Every counter of one scrape shows the same reading.
    assert.match(first, /nv_inference_count\{model="m",version="1"\} 1\n/);
    assert.match(first, /sdserve_images_generated_total\{model="m",version="1"\} 1\n/);
    const second = await (await fetch(url)).text();
    assert.equal(readings, 2);
    assert.match(second, /nv_inference_count\{model="m",version="1"\} 2\n/);
  });
});
