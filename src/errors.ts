/**
 * The one catalog of sdserve errors. Inner code throws `SdserveError`; each front end maps the
 * code to its transport status here and nowhere else.
 */

export type GrpcStatusName =
  | 'INVALID_ARGUMENT'
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'UNAVAILABLE'
  | 'RESOURCE_EXHAUSTED'
  | 'DEADLINE_EXCEEDED'
  | 'CANCELLED'
  | 'UNIMPLEMENTED'
  | 'UNAUTHENTICATED'
  | 'PERMISSION_DENIED'
  | 'INTERNAL';

interface CatalogEntry {
  readonly http: number;
  readonly grpc: GrpcStatusName;
}

export const ERROR_CATALOG = {
  SDS_ERR_INVALID_ARG: { http: 400, grpc: 'INVALID_ARGUMENT' },
  // Triton's core codes and their transport statuses (tritonserver's HTTP and gRPC front ends):
  // an unknown model name is INVALID_ARG, a known model without the version asked for NOT_FOUND,
  // a version that is not ready UNAVAILABLE.
  SDS_ERR_MODEL_NOT_FOUND: { http: 400, grpc: 'INVALID_ARGUMENT' },
  SDS_ERR_MODEL_NOT_READY: { http: 503, grpc: 'UNAVAILABLE' },
  SDS_ERR_NOT_FOUND: { http: 404, grpc: 'NOT_FOUND' },
  SDS_ERR_MODEL_CONTROL_DISABLED: { http: 503, grpc: 'UNAVAILABLE' },
  SDS_ERR_UNSUPPORTED: { http: 400, grpc: 'UNIMPLEMENTED' },
  SDS_ERR_QUEUE_FULL: { http: 503, grpc: 'UNAVAILABLE' },
  // Draining before exit: load balancers retry elsewhere on 503 / UNAVAILABLE.
  SDS_ERR_SHUTTING_DOWN: { http: 503, grpc: 'UNAVAILABLE' },
  SDS_ERR_TIMEOUT: { http: 504, grpc: 'DEADLINE_EXCEEDED' },
  SDS_ERR_CANCELLED: { http: 499, grpc: 'CANCELLED' },
  SDS_ERR_CONFIG: { http: 400, grpc: 'INVALID_ARGUMENT' },
  SDS_ERR_BACKEND: { http: 500, grpc: 'INTERNAL' },
  SDS_ERR_BACKEND_DIED: { http: 500, grpc: 'INTERNAL' },
  SDS_ERR_INTERNAL: { http: 500, grpc: 'INTERNAL' },
  // Access control (src/protocol/access-policy.ts). Triton answers a restricted API with HTTP 403
  // but gRPC UNAVAILABLE; sdserve says PERMISSION_DENIED, since UNAVAILABLE tells clients to retry.
  SDS_ERR_UNAUTHENTICATED: { http: 401, grpc: 'UNAUTHENTICATED' },
  SDS_ERR_RESTRICTED: { http: 403, grpc: 'PERMISSION_DENIED' },
  SDS_ERR_FORBIDDEN_ORIGIN: { http: 403, grpc: 'PERMISSION_DENIED' },
  SDS_ERR_UNSUPPORTED_MEDIA_TYPE: { http: 415, grpc: 'INVALID_ARGUMENT' },
} as const satisfies Record<string, CatalogEntry>;

export type ErrorCode = keyof typeof ERROR_CATALOG;

export class SdserveError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SdserveError';
    this.code = code;
  }

  get httpStatus(): number {
    return ERROR_CATALOG[this.code].http;
  }

  get grpcStatus(): GrpcStatusName {
    return ERROR_CATALOG[this.code].grpc;
  }
}

/** Wraps anything thrown into an SdserveError (of `code` when it is not one yet). */
export function toSdserveError(err: unknown, code: ErrorCode = 'SDS_ERR_INTERNAL'): SdserveError {
  if (err instanceof SdserveError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new SdserveError(code, message, { cause: err });
}

export const invalidArg = (message: string) => new SdserveError('SDS_ERR_INVALID_ARG', message);

/** How much of a caller's value a message quotes: enough to recognise it, never a 100 kB field whole. */
export const QUOTED_VALUE_MAX = 120;

/** What JSON leaves as it is but a log may break a line at: C1 controls and the Unicode line separators. */
const UNESCAPED_BY_JSON = /[\u007f-\u009f\u2028\u2029]/g;
/** Every control and line separator: a non-string's text (JSON's, or String()'s where JSON has none). */
const LINE_BREAKING = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g;
/** A string without any of these is its own escaped form in every quote mark. */
const NEEDS_ESCAPING = /["'\\\u0000-\u001f\u007f-\u009f\u2028\u2029\ud800-\udfff]/;

const unicodeEscape = (c: string) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`;

/**
 * A caller's value as a message quotes it: a string escaped as JSON does within `quote`s (a newline
 * or control character in it cannot start a forged log line; '' where a format, Triton's, writes
 * it bare), anything else as its JSON text, its line breaks escaped too. Over QUOTED_VALUE_MAX
 * characters, the start and then "… (N characters)".
 */
export function quoted(value: unknown, quote: '"' | "'" | '' = '"'): string {
  // A plain short name, the common case on every request's decoding path, needs no work.
  if (typeof value === 'string' && value.length <= QUOTED_VALUE_MAX && !NEEDS_ESCAPING.test(value)) return `${quote}${value}${quote}`;
  const text = typeof value === 'string' ? value : jsonText(value);
  let head = text.length > QUOTED_VALUE_MAX ? text.slice(0, QUOTED_VALUE_MAX) : text;
  if (head.length < text.length && /[\ud800-\udbff]$/.test(head)) head = head.slice(0, -1);  // whole characters only
  const more = head.length < text.length ? `… (${text.length} characters)` : '';
  if (typeof value !== 'string') return `${head.replace(LINE_BREAKING, unicodeEscape)}${more}`;
  let escaped = JSON.stringify(head).slice(1, -1).replace(UNESCAPED_BY_JSON, unicodeEscape);
  if (quote !== '"') escaped = escaped.replace(/\\"/g, '"');
  if (quote === "'") escaped = escaped.replace(/'/g, "\\'");
  return `${quote}${escaped}${quote}${more}`;
}

function jsonText(value: unknown): string {
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);  // a bigint, a cycle
  }
}

/** Whose error a failed model load is: the config's (the core's checks or the backend's refusal), else the server's. */
export function loadFailureCode(err: unknown): 'SDS_ERR_CONFIG' | 'SDS_ERR_BACKEND' {
  return err instanceof SdserveError && err.code === 'SDS_ERR_CONFIG' ? 'SDS_ERR_CONFIG' : 'SDS_ERR_BACKEND';
}
