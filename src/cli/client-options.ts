/**
 * Parsers for the `client` command's options. They run at the CLI boundary and throw
 * commander's `InvalidArgumentError`, which commander reports with the option's name.
 */
import { InvalidArgumentError } from 'commander';
import type { StepsOption } from './client-workload.js';

export function parsePositiveInteger(value: string): number {
  const parsed = parseInteger(value);
  if (parsed < 1) throw new InvalidArgumentError(`expected an integer >= 1, got '${value}'.`);
  return parsed;
}

export function parseNonNegativeInteger(value: string): number {
  const parsed = parseInteger(value);
  if (parsed < 0) throw new InvalidArgumentError(`expected an integer >= 0, got '${value}'.`);
  return parsed;
}

export function parseNonNegativeNumber(value: string): number {
  const parsed = parseNumber(value);
  if (!(parsed >= 0)) throw new InvalidArgumentError(`expected a number >= 0, got '${value}'.`);
  return parsed;
}

export function parsePositiveNumber(value: string): number {
  const parsed = parseNumber(value);
  if (!(parsed > 0)) throw new InvalidArgumentError(`expected a number > 0, got '${value}'.`);
  return parsed;
}

/** A number in (0, 1]: image-to-image's strength. */
export function parseStrength(value: string): number {
  const parsed = parseNumber(value);
  if (!(parsed > 0 && parsed <= 1)) throw new InvalidArgumentError(`expected a number in (0, 1], got '${value}'.`);
  return parsed;
}

/** `N` (every request) or `MIN-MAX` (each request draws uniformly from the range). */
export function parseSteps(value: string): StepsOption {
  const range = /^\s*(\d+)\s*-\s*(\d+)\s*$/.exec(value);
  if (range === null) return parsePositiveInteger(value);
  const [min, max] = [Number(range[1]), Number(range[2])];
  if (min < 1 || max < min) {
    throw new InvalidArgumentError(`expected MIN-MAX with 1 <= MIN <= MAX, got '${value}'.`);
  }
  return { min, max };
}

/**
 * Accepts `host:port` (as Triton's client does) or a full `http://` / `https://` URL and
 * returns the base URL without a trailing slash.
 */
export function parseServerUrl(value: string): string {
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(value) ? value : `http://${value}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    throw new InvalidArgumentError(`expected HOST:PORT or an http(s) URL, got '${value}'.`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new InvalidArgumentError(`expected an http or https URL, got '${value}'.`);
  }
  return url.href.replace(/\/+$/, '');
}

/** A finite number, or NaN (which every bound check rejects). */
function parseNumber(value: string): number {
  const parsed = value.trim() === '' ? NaN : Number(value);
  return Number.isFinite(parsed) ? parsed : NaN;
}

function parseInteger(value: string): number {
  const parsed = /^\s*[+-]?\d+\s*$/.test(value) ? Number(value) : NaN;
  if (!Number.isSafeInteger(parsed)) {
    throw new InvalidArgumentError(`expected an integer, got '${value}'.`);
  }
  return parsed;
}
