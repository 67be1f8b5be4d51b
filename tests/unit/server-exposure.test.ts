import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseRestrictedApis } from '../../src/protocol/access-policy.js';
import { exposureLines, isLoopback } from '../../src/server-exposure.js';

const frontEnd = (host: string, access = { restrictions: new Map() } as Parameters<typeof exposureLines>[0][0]['access']) => (
  { name: 'HTTP', flag: '--http-address', host, access, restrictFlag: '--http-restricted-api' });

describe('start-up exposure lines', () => {
  it('knows loopback addresses', () => {
    for (const host of ['127.0.0.1', '127.1.2.3', 'localhost', '::1', '[::1]']) assert.ok(isLoopback(host), host);
    for (const host of ['0.0.0.0', '::', '10.0.0.5', 'example.com']) assert.ok(!isLoopback(host), host);
  });

  it('says how to listen beyond this host when every service is on loopback', () => {
    const lines = exposureLines([frontEnd('127.0.0.1')]);
    assert.equal(lines.length, 1);
    assert.match(lines[0]!, /^Listening on this host only \(loopback\).*--http-address 0\.0\.0\.0/);
  });

  it('warns when a service listens beyond this host with no key and an open repository API', () => {
    const [warning] = exposureLines([frontEnd('0.0.0.0')]);
    assert.match(warning!, /^WARNING: the HTTP service listens on 0\.0\.0\.0/);
    assert.deepEqual(exposureLines([frontEnd('0.0.0.0', { apiKey: 'k'.repeat(16), restrictions: new Map() })]), []);
    const restricted = parseRestrictedApis(['model-repository:admin=secret'], '--http-restricted-api');
    assert.deepEqual(exposureLines([frontEnd('0.0.0.0', { restrictions: restricted })]), []);
  });
});
