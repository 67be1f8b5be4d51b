import { execFileSync } from 'node:child_process';

/** GPUs visible to this host, by asking the driver's tool; 0 where there is none. */
export function detectGpuCount(): number {
  try {
    const out = execFileSync('nvidia-smi', ['--query-gpu=index', '--format=csv,noheader'], {
      encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'ignore'],
    });
    return out.split('\n').filter((line) => line.trim() !== '').length;
  } catch {
    return 0;
  }
}
