import { execFile } from 'node:child_process';

export interface GpuMemory {
  index: string;
  uuid: string;
  usedBytes: number;
  totalBytes: number;
}

const MIB = 1024 * 1024;

/**
 * Memory of each GPU by asking `nvidia-smi`; an empty list where the tool is missing or fails,
 * so hosts without GPUs simply report no GPU metrics.
 */
export function readGpuMemory(): Promise<GpuMemory[]> {
  return new Promise((resolve) => {
    execFile('nvidia-smi', ['--query-gpu=index,uuid,memory.used,memory.total', '--format=csv,noheader,nounits'],
      { encoding: 'utf8', timeout: 5_000 }, (err, stdout) => {
        resolve(err ? [] : parseGpuMemory(stdout));
      });
  });
}

/** Parses nvidia-smi's CSV rows (`index, uuid, used MiB, total MiB`); rows it cannot read are left out. */
export function parseGpuMemory(csv: string): GpuMemory[] {
  return csv.split('\n').map((line) => line.split(',').map((field) => field.trim()))
    .filter((fields) => fields.length === 4 && fields[2] !== '' && Number.isFinite(Number(fields[2])) && Number.isFinite(Number(fields[3])))
    .map(([index, uuid, used, total]) => ({ index, uuid, usedBytes: Number(used) * MIB, totalBytes: Number(total) * MIB }));
}
