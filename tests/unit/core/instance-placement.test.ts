import assert from 'node:assert/strict';
import { test } from 'node:test';
import { detectGpus, parseVisibleDevices } from '../../../src/core/gpu.js';
import { placeInstances } from '../../../src/core/instance-placement.js';
import { parseModelConfig } from '../../../src/repository/index.js';

const config = (backend: string, groups: string) => parseModelConfig(`backend: "${backend}"\ninstance_group [ ${groups} ]`, 'config.pbtxt', 'sd');

test('KIND_GPU with count and gpus: count processes per listed GPU, each pinned to its GPU by CUDA_VISIBLE_DEVICES', () => {
  const placements = placeInstances(config('diffusion', '{ kind: KIND_GPU, count: 2, gpus: [ 0, 1 ] }'), ['0', '1']);
  assert.deepEqual(placements, [
    { label: 'sd_0_0', kind: 'GPU', deviceId: 0, cudaVisibleDevices: '0' },
    { label: 'sd_0_1', kind: 'GPU', deviceId: 0, cudaVisibleDevices: '0' },
    { label: 'sd_0_2', kind: 'GPU', deviceId: 0, cudaVisibleDevices: '1' },
    { label: 'sd_0_3', kind: 'GPU', deviceId: 0, cudaVisibleDevices: '1' },
  ]);
});

test('gpus index the GPUs the server may use: the server\'s own CUDA_VISIBLE_DEVICES names them for the children', () => {
  const visible = detectGpus({ CUDA_VISIBLE_DEVICES: '2,3' }, () => ['0', '1', '2', '3']);
  assert.deepEqual(visible, ['2', '3']);
  assert.deepEqual(placeInstances(config('diffusion', '{ kind: KIND_GPU, gpus: [ 1 ] }'), visible).map((p) => p.cudaVisibleDevices), ['3']);
  // no gpus: one instance per visible GPU
  assert.deepEqual(placeInstances(config('diffusion', '{ kind: KIND_GPU }'), visible).map((p) => p.cudaVisibleDevices), ['2', '3']);
  assert.deepEqual(detectGpus({}, () => ['0', '1']), ['0', '1']);
});

test('a GPU outside the visible ones is a load error that says how many there are', () => {
  assert.throws(() => placeInstances(config('diffusion', '{ kind: KIND_GPU, gpus: [ 0, 2 ] }'), ['0', '1']), {
    code: 'SDS_ERR_CONFIG', message: /instance_group 0 of model 'sd' names GPU 2, but 2 GPU\(s\) are visible \(0-1\)/,
  });
});

test('Triton Python models see every visible GPU and get its index, as in Triton', () => {
  assert.deepEqual(placeInstances(config('python', '{ kind: KIND_GPU, gpus: [ 1 ] }'), ['0', '1']),
    [{ label: 'sd_0_0', kind: 'GPU', deviceId: 1 }]);
});

test('KIND_CPU, and KIND_GPU on a host without GPUs, run count processes on the CPU', () => {
  let warned = 0;
  const placements = placeInstances(config('diffusion', '{ kind: KIND_GPU, count: 2 }, { name: "cpu", kind: KIND_CPU }'), [], () => { warned += 1; });
  assert.deepEqual(placements, [
    { label: 'sd_0_0', kind: 'CPU', deviceId: 0 },
    { label: 'sd_0_1', kind: 'CPU', deviceId: 0 },
    { label: 'cpu_2', kind: 'CPU', deviceId: 0 },
  ]);
  assert.equal(warned, 1);
});

test('CUDA_VISIBLE_DEVICES is read as CUDA reads it: up to the first invalid entry; empty or -1 hides every GPU', () => {
  assert.deepEqual(parseVisibleDevices('0, 2'), ['0', '2']);
  assert.deepEqual(parseVisibleDevices('GPU-8e9a4b2c-1d2e-4f00-9abc-0123456789ab,1'), ['GPU-8e9a4b2c-1d2e-4f00-9abc-0123456789ab', '1']);
  assert.deepEqual(parseVisibleDevices('1,-1,2'), ['1']);
  assert.deepEqual(parseVisibleDevices(''), []);
  assert.deepEqual(parseVisibleDevices('-1'), []);
  assert.deepEqual(detectGpus({ CUDA_VISIBLE_DEVICES: '' }, () => ['0']), []);
});
