/**
 * Bounds on the shape of a request, checked before any per-key work: a million `parameters` keys
 * would otherwise hold the event loop for seconds (building the object, then walking it).
 * JSON text is scanned before it is parsed; gRPC maps, decoded by protobufjs, are counted.
 */
import { SdserveError } from '../errors.js';

/** Most members of one JSON object / entries of one parameter map in a request. */
export const MAX_REQUEST_ENTRIES = 128;
/** Deepest nesting of JSON objects and arrays (tensor data nests once per dimension). */
export const MAX_JSON_DEPTH = 32;

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COLON = 0x3a;

/** The index of the quote that closes the string opened at `open`, or -1. */
function stringEnd(text: Buffer, open: number): number {
  let end = open;
  for (;;) {
    end = text.indexOf(QUOTE, end + 1);
    if (end < 0) return -1;
    let backslashes = 0;
    while (text[end - 1 - backslashes] === BACKSLASH) backslashes += 1;
    if (backslashes % 2 === 0) return end;
  }
}

/**
 * Throws a 400 when JSON text holds an object with more than MAX_REQUEST_ENTRIES members or
 * nests deeper than MAX_JSON_DEPTH. Only the shape is looked at; JSON.parse judges the syntax.
 */
export function checkJsonText(text: Buffer, what: string): void {
  // Per open container: its member count (objects) or -1 (arrays).
  const open: number[] = [];
  for (let i = 0; i < text.length; i += 1) {
    const c = text[i];
    if (c === QUOTE) {
      i = stringEnd(text, i);
      if (i < 0) return;
    } else if (c === 0x7b || c === 0x5b) { // { [
      open.push(c === 0x7b ? 0 : -1);
      if (open.length > MAX_JSON_DEPTH) throw new SdserveError('SDS_ERR_INVALID_ARG', `${what}: JSON nested deeper than ${MAX_JSON_DEPTH} levels`);
    } else if (c === 0x7d || c === 0x5d) { // } ]
      open.pop();
    } else if (c === COLON && open.length > 0 && open[open.length - 1]! >= 0) {
      const members = open[open.length - 1]! + 1;
      open[open.length - 1] = members;
      if (members > MAX_REQUEST_ENTRIES) {
        throw new SdserveError('SDS_ERR_INVALID_ARG',
          `${what}: a JSON object (such as 'parameters') has more than ${MAX_REQUEST_ENTRIES} members; at most ${MAX_REQUEST_ENTRIES} are accepted`);
      }
    }
  }
}

/** Throws a 400 when a decoded map (a gRPC `parameters`) has more than MAX_REQUEST_ENTRIES entries. */
export function checkEntryCount(value: object | undefined, what: string): void {
  if (value === undefined) return;
  const count = Object.keys(value).length;
  if (count > MAX_REQUEST_ENTRIES) {
    throw new SdserveError('SDS_ERR_INVALID_ARG', `${what} has ${count} entries; at most ${MAX_REQUEST_ENTRIES} are accepted`);
  }
}
