/**
 * Frames on the backend socket (docs/backend-protocol.md, "Frame"): a 20-byte header (length,
 * type, reserved, correlation id, JSON length), JSON metadata, then raw tensor bytes.
 */

import { SdserveError } from '../errors.js';
import { isMessageType, type MessageType } from './messages.js';

export const HEADER_BYTES = 20;
/** Bytes that `length` counts before the JSON: type, reserved, correlation id, JSON length. */
export const FIXED_AFTER_LENGTH = HEADER_BYTES - 4;
export const MAX_FRAME_LENGTH = 0xffffffff;

export interface Frame {
  type: MessageType;
  /** A request's id, echoed by its response; 0 for notifications. */
  correlationId: number;
  metadata: Record<string, unknown>;
  payload: Buffer;
}

/** A frame that could not be understood; it was consumed whole, so decoding carries on. */
export class MalformedFrameError extends SdserveError {
  readonly correlationId: number;

  constructor(message: string, correlationId = 0) {
    super('SDS_ERR_BACKEND', `malformed frame: ${message}`);
    this.name = 'MalformedFrameError';
    this.correlationId = correlationId;
  }
}

/**
 * The frame as buffers to write in order: header and JSON in one, then the payload parts
 * untouched, so tensor bytes are never copied into a frame buffer.
 */
export function encodeFrame(
  type: MessageType,
  correlationId: number,
  metadata: object,
  payload: readonly Buffer[] = [],
): Buffer[] {
  const json = Buffer.from(JSON.stringify(metadata), 'utf8');
  const payloadLength = payload.reduce((sum, part) => sum + part.length, 0);
  const length = FIXED_AFTER_LENGTH + json.length + payloadLength;
  if (length > MAX_FRAME_LENGTH) {
    throw new SdserveError('SDS_ERR_INVALID_ARG', `frame of ${length} bytes exceeds the protocol's 4 GiB - 1 limit`);
  }
  const head = Buffer.allocUnsafe(HEADER_BYTES + json.length);
  head.writeUInt32LE(length, 0);
  head.writeUInt16LE(type, 4);
  head.writeUInt16LE(0, 6);
  head.writeBigUInt64LE(BigInt(correlationId), 8);
  head.writeUInt32LE(json.length, 16);
  json.copy(head, HEADER_BYTES);
  return [head, ...payload];
}

export interface FrameHandlers {
  onFrame(frame: Frame): void;
  onError(error: MalformedFrameError): void;
}

/**
 * Turns a byte stream cut at arbitrary points into frames. Bad frames are reported through
 * `onError` and skipped by their declared length; `push` itself never throws (the handlers
 * must not either).
 */
export class FrameDecoder {
  private readonly chunks: Buffer[] = [];
  private buffered = 0;
  /** Bytes still to drop of a frame too large to buffer. */
  private skipping = 0;
  /**
   * A frame that spans chunks, filled as they arrive: copying each chunk once on arrival keeps
   * a large frame (a batch of images) from costing one long copy on the event loop at its end.
   */
  private assembling: { frame: Buffer; filled: number } | undefined;

  constructor(
    private readonly handlers: FrameHandlers,
    private readonly maxFrameLength: number = MAX_FRAME_LENGTH,
  ) {}

  push(chunk: Buffer): void {
    let rest = chunk;
    if (this.assembling !== undefined) {
      const { frame, filled } = this.assembling;
      const used = rest.copy(frame, filled);
      rest = rest.subarray(used);
      if (filled + used < frame.length) {
        this.assembling.filled = filled + used;
        return;
      }
      this.assembling = undefined;
      this.parse(frame);
    }
    if (this.skipping > 0) {
      const dropped = Math.min(this.skipping, rest.length);
      this.skipping -= dropped;
      rest = rest.subarray(dropped);
    }
    if (rest.length > 0) {
      this.chunks.push(rest);
      this.buffered += rest.length;
    }
    while (this.buffered >= 4) {
      const length = this.peekLength();
      if (length > this.maxFrameLength) {
        this.take(4);
        this.handlers.onError(new MalformedFrameError(
          `frame length ${length} exceeds the ${this.maxFrameLength}-byte limit`));
        const dropped = Math.min(length, this.buffered);
        if (dropped > 0) this.take(dropped);
        this.skipping = length - dropped;
        continue;
      }
      if (this.buffered < 4 + length) {
        const filled = this.buffered;
        const frame = Buffer.allocUnsafe(4 + length);
        this.take(filled).copy(frame);
        this.assembling = { frame, filled };
        return;
      }
      this.parse(this.take(4 + length));
    }
  }

  /** Bytes received but not yet part of a complete frame. */
  get pendingBytes(): number {
    return this.buffered + (this.assembling?.filled ?? 0);
  }

  private parse(bytes: Buffer): void {
    const length = bytes.length - 4;
    if (length < FIXED_AFTER_LENGTH) {
      this.handlers.onError(new MalformedFrameError(
        `frame length ${length} is below the ${FIXED_AFTER_LENGTH}-byte minimum`));
      return;
    }
    const typeValue = bytes.readUInt16LE(4);
    const bigCorrelationId = bytes.readBigUInt64LE(8);
    const jsonLength = bytes.readUInt32LE(16);
    if (bigCorrelationId > BigInt(Number.MAX_SAFE_INTEGER)) {
      this.handlers.onError(new MalformedFrameError(`correlation id ${bigCorrelationId} is too large`));
      return;
    }
    const correlationId = Number(bigCorrelationId);
    const fail = (message: string) => this.handlers.onError(new MalformedFrameError(message, correlationId));
    if (jsonLength > length - FIXED_AFTER_LENGTH) {
      fail(`json_length ${jsonLength} exceeds the ${length - FIXED_AFTER_LENGTH} bytes left in the frame`);
      return;
    }
    if (!isMessageType(typeValue)) {
      fail(`unknown message type ${typeValue}`);
      return;
    }
    let metadata: unknown = {};
    if (jsonLength > 0) {
      try {
        metadata = JSON.parse(bytes.toString('utf8', HEADER_BYTES, HEADER_BYTES + jsonLength));
      } catch (err) {
        fail(`metadata is not valid JSON: ${(err as Error).message}`);
        return;
      }
    }
    if (typeof metadata !== 'object' || metadata === null || Array.isArray(metadata)) {
      fail('metadata must be a JSON object');
      return;
    }
    this.handlers.onFrame({
      type: typeValue,
      correlationId,
      metadata: metadata as Record<string, unknown>,
      payload: bytes.subarray(HEADER_BYTES + jsonLength),
    });
  }

  private peekLength(): number {
    const first = this.chunks[0];
    if (first.length >= 4) return first.readUInt32LE(0);
    const head = Buffer.alloc(4);
    let copied = 0;
    for (const chunk of this.chunks) {
      copied += chunk.copy(head, copied, 0, Math.min(chunk.length, 4 - copied));
      if (copied === 4) break;
    }
    return head.readUInt32LE(0);
  }

  /** Removes `count` buffered bytes; a view when they sit in one chunk, else one copy. */
  private take(count: number): Buffer {
    this.buffered -= count;
    const first = this.chunks[0];
    if (first.length >= count) {
      if (first.length === count) this.chunks.shift();
      else this.chunks[0] = first.subarray(count);
      return first.subarray(0, count);
    }
    const out = Buffer.allocUnsafe(count);
    let copied = 0;
    while (copied < count) {
      const chunk = this.chunks[0];
      const used = Math.min(chunk.length, count - copied);
      chunk.copy(out, copied, 0, used);
      copied += used;
      if (used === chunk.length) this.chunks.shift();
      else this.chunks[0] = chunk.subarray(used);
    }
    return out;
  }
}
