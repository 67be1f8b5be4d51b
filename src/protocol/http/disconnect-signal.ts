import type { FastifyReply } from 'fastify';
import { SdserveError } from '../../errors.js';

/** Aborts when the connection closes before the response has been written in full. */
export function disconnectSignal(reply: FastifyReply): AbortSignal {
  const controller = new AbortController();
  let finished = false;
  reply.raw.once('finish', () => { finished = true; });
  reply.raw.once('close', () => {
    if (!finished) {
      controller.abort(new SdserveError('SDS_ERR_CANCELLED', 'client disconnected before the response was sent'));
    }
  });
  return controller.signal;
}
