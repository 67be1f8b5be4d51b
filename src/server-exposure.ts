/**
 * The start-up lines that say who can reach the server: loopback only (the default), or, when a
 * front end listens beyond this host without an API key and with the model repository API open,
 * a warning, since anyone who reaches it can load and unload models.
 */
import { isIP } from 'node:net';
import type { AccessPolicy } from './protocol/access-policy.js';

export interface FrontEndExposure {
  name: string;
  /** The flag that sets its address. */
  flag: string;
  host: string;
  access: AccessPolicy;
  /** The flag that restricts its API groups. */
  restrictFlag: string;
}

/** True for addresses only this host can reach. */
export function isLoopback(host: string): boolean {
  const bare = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (bare === 'localhost' || bare === '::1') return true;
  return isIP(bare) === 4 && bare.startsWith('127.');
}

export function exposureLines(frontEnds: readonly FrontEndExposure[]): string[] {
  const exposed = frontEnds.filter((frontEnd) => !isLoopback(frontEnd.host));
  if (exposed.length === 0) {
    return ['Listening on this host only (loopback); to serve other hosts, bind all interfaces with '
      + '--http-address 0.0.0.0 --grpc-address 0.0.0.0 and set --api-key'];
  }
  return exposed
    .filter(({ access }) => access.apiKey === undefined && !access.restrictions.has('model-repository'))
    .map(({ name, flag, host, restrictFlag }) => `WARNING: the ${name} service listens on ${host} (${flag}) with no --api-key `
      + `and an unrestricted model repository API: anyone who reaches it can load models and run inference. `
      + `Set --api-key, or ${restrictFlag} model-repository:<header>=<value>.`);
}
