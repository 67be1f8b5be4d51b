/**
 * Who may call what, shared by the HTTP, gRPC and metrics front ends.
 *
 * Two independent checks, in this order:
 * 1. the API key (`--api-key`): when set, every request must carry `Authorization: Bearer <key>`
 *    (OpenAI's convention, so the OpenAI SDKs' `api_key` works; gRPC metadata `authorization`
 *    alike). Missing or wrong: SDS_ERR_UNAUTHENTICATED (401 / UNAUTHENTICATED).
 * 2. Triton's restricted API groups (`--http-restricted-api` / `--grpc-restricted-protocol`
 *    `API[,API]:HEADER=VALUE`): a request to a restricted group must carry HEADER=VALUE (on gRPC
 *    the header is `triton-grpc-protocol-HEADER`, as in Triton). Missing or wrong:
 *    SDS_ERR_RESTRICTED (403 / PERMISSION_DENIED).
 * Secrets are compared in constant time.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { SdserveError } from '../errors.js';

/** Triton's restricted API groups (tritonserver `--http-restricted-api`). */
export const API_GROUPS = [
  'health', 'metadata', 'inference', 'shared-memory', 'model-config', 'model-repository', 'statistics', 'trace', 'logging',
] as const;
export type ApiGroup = (typeof API_GROUPS)[number];

/** The header (and its value) a restricted group requires. */
export interface Restriction {
  header: string;
  value: string;
}

export interface AccessPolicy {
  /** When set, every request needs `Authorization: Bearer <apiKey>`. */
  apiKey?: string;
  restrictions: ReadonlyMap<ApiGroup, Restriction>;
}

export const OPEN_POLICY: AccessPolicy = { restrictions: new Map() };

/** Triton prefixes the restriction header on gRPC (HTTP/2 metadata keys are lowercase). */
export const GRPC_RESTRICTED_HEADER_PREFIX = 'triton-grpc-protocol-';

const isApiGroup = (name: string): name is ApiGroup => (API_GROUPS as readonly string[]).includes(name);

/**
 * Parses the values of one restricted-API flag (`API[,API]:HEADER=VALUE`, repeatable) into a map;
 * an API may belong to one group only, as in Triton.
 */
export function parseRestrictedApis(specs: readonly string[], flag: string): Map<ApiGroup, Restriction> {
  const restrictions = new Map<ApiGroup, Restriction>();
  for (const spec of specs) {
    const colon = spec.indexOf(':');
    const equals = spec.indexOf('=', colon + 1);
    const header = spec.slice(colon + 1, equals).trim().toLowerCase();
    const value = spec.slice(equals + 1);
    if (colon < 1 || equals < 0 || header === '' || value === '' || !/^[a-z0-9!#$%&'*+.^_`|~-]+$/.test(header)) {
      throw new Error(`${flag} '${spec}': expected API[,API]:HEADER=VALUE (APIs: ${API_GROUPS.join(', ')})`);
    }
    for (const api of spec.slice(0, colon).split(',').map((name) => name.trim())) {
      if (!isApiGroup(api)) throw new Error(`${flag} '${spec}': unknown API '${api}' (APIs: ${API_GROUPS.join(', ')})`);
      if (restrictions.has(api)) throw new Error(`${flag}: API '${api}' is restricted twice; an API belongs to one group`);
      restrictions.set(api, { header, value });
    }
  }
  return restrictions;
}

/** Equal-time comparison of two secrets of any length (digests first, so lengths do not leak). */
export function secretsEqual(given: string, expected: string): boolean {
  const digest = (text: string) => createHash('sha256').update(text, 'utf8').digest();
  return timingSafeEqual(digest(given), digest(expected));
}

/** The token of an `Authorization: Bearer <token>` value, or undefined. */
export function bearerToken(authorization: string | undefined): string | undefined {
  const match = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(authorization ?? '');
  return match?.[1];
}

/** Throws SDS_ERR_UNAUTHENTICATED unless the policy has no key or `authorization` carries it. */
export function checkApiKey(policy: AccessPolicy, authorization: string | undefined): void {
  if (policy.apiKey === undefined) return;
  const token = bearerToken(authorization);
  if (token === undefined) {
    throw new SdserveError('SDS_ERR_UNAUTHENTICATED', "this server requires an API key: send the header 'Authorization: Bearer <key>'");
  }
  if (!secretsEqual(token, policy.apiKey)) throw new SdserveError('SDS_ERR_UNAUTHENTICATED', 'the API key is not valid');
}

/**
 * Throws SDS_ERR_RESTRICTED when `group` is restricted and the request lacks its header value.
 * `headerOf` reads a request header by lowercase name; `prefix` is '' on HTTP, Triton's on gRPC.
 */
export function checkRestriction(
  policy: AccessPolicy, group: ApiGroup, headerOf: (name: string) => string | undefined, prefix = '',
): void {
  const restriction = policy.restrictions.get(group);
  if (restriction === undefined) return;
  const header = `${prefix}${restriction.header}`;
  const given = headerOf(header);
  if (given === undefined || !secretsEqual(given, restriction.value)) {
    // Triton's wording: "API" on HTTP, "protocol" on gRPC.
    const what = prefix === '' ? 'API' : 'protocol';
    throw new SdserveError('SDS_ERR_RESTRICTED', `This ${what} is restricted, expecting header '${header}'`);
  }
}

/** Both checks for one request. */
export function checkAccess(
  policy: AccessPolicy, group: ApiGroup, headerOf: (name: string) => string | undefined, prefix = '',
): void {
  checkApiKey(policy, headerOf('authorization'));
  checkRestriction(policy, group, headerOf, prefix);
}
