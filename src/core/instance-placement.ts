import { SdserveError } from '../errors.js';
import type { ModelConfig } from '../repository/model-config-types.js';

/** Where one backend process of a model version runs. */
export interface InstancePlacement {
  label: string;
  kind: 'GPU' | 'CPU';
  /** `model_instance_device_id`: the GPU as the process sees it. */
  deviceId: number;
  /** The process's CUDA_VISIBLE_DEVICES: the one GPU it runs on; absent where it sees what the server sees. */
  cudaVisibleDevices?: string;
}

/**
 * Triton's instance_group placement: `count` processes on each GPU of `gpus` (every visible GPU
 * when empty) for KIND_GPU, `count` on the CPU otherwise. `visibleGpus` are the GPUs this server
 * may use, as CUDA_VISIBLE_DEVICES names them; `gpus` indexes that list. A process of a built-in
 * backend is pinned to its one GPU (it then sees it as device 0), so its CUDA context, memory and
 * kernels never touch another instance's GPU; a Triton Python model sees every visible GPU and
 * gets its index, as in Triton. With no GPU, KIND_GPU runs on the CPU (`onNoGpu` is told).
 */
export function placeInstances(config: ModelConfig, visibleGpus: readonly string[], onNoGpu: () => void = () => {}): InstancePlacement[] {
  const pin = config.backend !== 'python';
  const placements: InstancePlacement[] = [];
  config.instance_group.forEach((group, groupIndex) => {
    const name = group.name || `${config.name}_${groupIndex}`;
    const onCpu = group.kind === 'KIND_CPU' || group.kind === 'KIND_MODEL' || visibleGpus.length === 0;
    if (onCpu && group.kind === 'KIND_GPU') onNoGpu();
    const gpus = onCpu ? [undefined] : (group.gpus.length > 0 ? group.gpus : [...visibleGpus.keys()]);
    for (const gpu of gpus) {
      if (gpu !== undefined && (!Number.isInteger(gpu) || gpu < 0 || gpu >= visibleGpus.length)) {
        throw new SdserveError('SDS_ERR_CONFIG', `instance_group ${groupIndex} of model '${config.name}' names GPU ${gpu}, `
          + `but ${visibleGpus.length} GPU(s) are visible (0-${visibleGpus.length - 1})`);
      }
      for (let i = 0; i < group.count; i += 1) {
        const label = `${name}_${placements.length}`;
        if (gpu === undefined) placements.push({ label, kind: 'CPU', deviceId: 0 });
        else if (pin) placements.push({ label, kind: 'GPU', deviceId: 0, cudaVisibleDevices: visibleGpus[gpu] });
        else placements.push({ label, kind: 'GPU', deviceId: gpu });
      }
    }
  });
  return placements;
}
