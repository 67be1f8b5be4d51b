/**
 * Closes connections that never send a request. Node's headersTimeout only starts once the
 * first byte of a request arrives, so a client that connects and stays silent would hold its
 * file descriptor forever; this gives it `timeoutMs` to start its first request.
 */
import type { Server as HttpServer } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import type { Socket } from 'node:net';

export function closeSilentConnections(server: HttpServer | HttpsServer, timeoutMs: number, tls: boolean): void {
  const timers = new WeakMap<Socket, NodeJS.Timeout>();
  // On TLS the socket that carries requests is the one of 'secureConnection'.
  server.on(tls ? 'secureConnection' : 'connection', (socket: Socket) => {
    const timer = setTimeout(() => socket.destroy(), timeoutMs).unref();
    timers.set(socket, timer);
    socket.once('close', () => clearTimeout(timer));
  });
  server.on('request', (request: { socket: Socket }) => clearTimeout(timers.get(request.socket)));
}
