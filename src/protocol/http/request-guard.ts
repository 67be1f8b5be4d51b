/**
 * The HTTP front end's one gate, an `onRequest` hook run before any route (and before the
 * not-found handler), so routes added later are covered without touching them:
 * 1. cross-origin writes: a POST (PUT, PATCH, DELETE) whose `Origin` is neither the server's own
 *    nor one of `--http-cors-origin` is refused (403): a web page the user visits cannot drive
 *    the server, whatever Content-Type it uses or omits.
 * 2. media type: a body is JSON (`application/json`, `application/*+json`, or no Content-Type as
 *    tritonclient sends), or one of the types its route lists in `config.acceptMediaTypes` (the
 *    infer route: `application/octet-stream`, Triton's binary tensor extension). Anything else is
 *    415, `text/plain` and form bodies included.
 * 3. access: the API key and the restricted API groups (access-policy.ts), by the route's group.
 *    A route not named here is `inference` (fail closed); `/playground` (and its icon) is a static
 *    page without data and stays open (its API calls are checked like any other).
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { quoted, SdserveError } from '../../errors.js';
import { checkAccess, type AccessPolicy, type ApiGroup } from '../access-policy.js';

/** Route patterns → Triton API group; the first match wins, anything else is `inference`. */
const GROUP_OF_ROUTE: ReadonlyArray<readonly [RegExp, ApiGroup]> = [
  [/^\/v2\/health\//, 'health'],
  [/\/ready$/, 'health'],
  [/^\/v2\/repository\//, 'model-repository'],
  [/\/config$/, 'model-config'],
  [/\/stats$/, 'statistics'],
  [/^\/v2\/(system|cuda)sharedmemory\b/, 'shared-memory'],
  [/\/trace\//, 'trace'],
  [/^\/v2\/logging\b/, 'logging'],
  [/^\/v2(\/models\/:model(\/versions\/:version)?)?$/, 'metadata'],
  [/^\/v2\/openapi\.json$/, 'metadata'],
  [/^\/v2\/models\/:model(\/versions\/:version)?\/capabilities$/, 'metadata'],
  [/^\/v1\/models$/, 'metadata'],
];

/** Routes that need neither key nor header: static pages that carry no data. */
const PUBLIC_ROUTES = new Set(['/playground', '/favicon.ico']);

/** The API group of a route pattern (`request.routeOptions.url`); unmatched requests: inference. */
export function apiGroupOf(routePattern: string | undefined): ApiGroup {
  if (routePattern === undefined) return 'inference';
  return GROUP_OF_ROUTE.find(([pattern]) => pattern.test(routePattern))?.[1] ?? 'inference';
}

const JSON_TYPE = /^application\/(json|[a-z0-9.+-]+\+json)$/;
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

export interface RequestGuardOptions {
  policy: AccessPolicy;
  /** Origins (scheme://host[:port]) whose pages may call this server (`--http-cors-origin`). */
  corsOrigins: readonly string[];
}

function hasBody(request: FastifyRequest): boolean {
  const length = request.headers['content-length'];
  return request.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}

/** Route option: media types a route takes besides JSON (`{ config: { acceptMediaTypes } }`). */
export interface MediaTypeConfig {
  acceptMediaTypes?: readonly string[];
}

declare module 'fastify' {
  interface FastifyContextConfig extends MediaTypeConfig {}
}

const extraMediaTypes = (request: FastifyRequest) => (request.routeOptions.config as MediaTypeConfig | undefined)?.acceptMediaTypes ?? [];

function checkOrigin(request: FastifyRequest, corsOrigins: readonly string[]): void {
  const origin = request.headers.origin;
  if (origin === undefined || SAFE_METHODS.has(request.method)) return;
  if (origin === `${request.protocol}://${request.host}` || corsOrigins.includes(origin)) return;
  throw new SdserveError('SDS_ERR_FORBIDDEN_ORIGIN',
    `cross-origin ${request.method} from ${quoted(origin, "'")} refused; allow the origin with --http-cors-origin`);
}

function checkMediaType(request: FastifyRequest): void {
  const contentType = request.headers['content-type'];
  if (contentType === undefined || !hasBody(request)) return;
  const mediaType = contentType.split(';')[0]!.trim().toLowerCase();
  const extra = extraMediaTypes(request);
  if (JSON_TYPE.test(mediaType) || extra.includes(mediaType)) return;
  throw new SdserveError('SDS_ERR_UNSUPPORTED_MEDIA_TYPE',
    `Content-Type ${quoted(mediaType, "'")} is not accepted here: send ${['application/json', ...extra].join(' or ')}`);
}

/** The onRequest hook enforcing origin, media type and access for every request. */
export function requestGuard(options: RequestGuardOptions) {
  return async (request: FastifyRequest, _reply: FastifyReply): Promise<void> => {
    const route = request.routeOptions.url;
    // A CORS preflight carries no credentials; @fastify/cors answers it.
    if (request.method === 'OPTIONS' && options.corsOrigins.length > 0) return;
    checkOrigin(request, options.corsOrigins);
    checkMediaType(request);
    if (route !== undefined && PUBLIC_ROUTES.has(route)) return;
    checkAccess(options.policy, apiGroupOf(route), (name) => {
      const value = request.headers[name];
      return Array.isArray(value) ? value[0] : value;
    });
  };
}
