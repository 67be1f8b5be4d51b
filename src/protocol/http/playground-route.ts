/**
 * `GET /` sends a browser to the playground. `GET /playground`: a single-page web playground (web/playground.html, no external assets): pick
 * a ready model from `/v1/models`, set the request parameters, watch the steps and previews of
 * `generate_stream`, cancel, download the images.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { PROJECT_ROOT } from '../../paths.js';

export const PLAYGROUND_FILE = path.join(PROJECT_ROOT, 'web', 'playground.html');

export function registerPlaygroundRoute(app: FastifyInstance): void {
  const page = readFileSync(PLAYGROUND_FILE);
  app.get('/playground', async (_request, reply) => reply.type('text/html; charset=utf-8').send(page));
  app.get('/', async (_request, reply) => reply.redirect('/playground', 302));
}
