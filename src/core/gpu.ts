import { execFileSync } from 'node:child_process';

/**
 * The GPUs this server may use, as CUDA_VISIBLE_DEVICES names them for a child process: the
 * server's own CUDA_VISIBLE_DEVICES when it is set (a container runtime or the operator narrowed
 * the GPUs), else every GPU the driver's tool lists, by index; none where there is no GPU.
 */
export function detectGpus(env: NodeJS.ProcessEnv = process.env, listGpus: () => string[] = nvidiaSmiIndexes): string[] {
  const visible = env.CUDA_VISIBLE_DEVICES;
  return visible === undefined ? listGpus() : parseVisibleDevices(visible);
}

/** CUDA's reading of CUDA_VISIBLE_DEVICES: a comma-separated list that ends at the first invalid entry. */
export function parseVisibleDevices(value: string): string[] {
  const devices: string[] = [];
  for (const entry of value.split(',').map((item) => item.trim())) {
    if (entry === '' || /^-\d+$/.test(entry) || !/^(\d+|GPU-[\w-]+|MIG-[\w/-]+)$/.test(entry)) break;
    devices.push(entry);
  }
  return devices;
}

function nvidiaSmiIndexes(): string[] {
  try {
    const out = execFileSync('nvidia-smi', ['--query-gpu=index', '--format=csv,noheader'], {
      encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'ignore'],
    });
    return out.split('\n').map((line) => line.trim()).filter((line) => line !== '');
  } catch {
    return [];
  }
}
