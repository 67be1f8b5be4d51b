/**
 * `GET /` sends a browser to the playground. `GET /playground`: a single-page web UI
 * (web/playground.html, no external assets): its form is built from the model's declared
 * parameters (`/v2/models/:model/capabilities`), requests go to `generate_stream`, and the images
 * with their parameters are kept in the browser's IndexedDB. `GET /favicon.ico`: its icon.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { PROJECT_ROOT } from '../../paths.js';

export const PLAYGROUND_FILE = path.join(PROJECT_ROOT, 'web', 'playground.html');
export const FAVICON_FILE = path.join(PROJECT_ROOT, 'web', 'favicon.svg');

export function registerPlaygroundRoute(app: FastifyInstance): void {
  const page = readFileSync(PLAYGROUND_FILE);
  const icon = readFileSync(FAVICON_FILE);
  // Browsers ask for /favicon.ico whatever the page links; an SVG answers it (no 404 in their logs).
  app.get('/favicon.ico', async (_request, reply) => reply.type('image/svg+xml').header('cache-control', 'max-age=86400').send(icon));
  app.get('/playground', async (_request, reply) => reply.type('text/html; charset=utf-8').send(page));
  app.get('/', async (_request, reply) => reply.redirect('/playground', 302));
}
