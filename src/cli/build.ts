import { spawn } from 'node:child_process';
import path from 'node:path';
import { Command } from 'commander';
import { defaultEngineCacheDir, defaultPythonExecutable, PROJECT_ROOT } from '../paths.js';
import { resolveVersions, scanRepository } from '../repository/index.js';

interface BuildOptions {
  modelRepository: string;
  model: string;
  version?: string;
  force?: boolean;
  engineCacheDir: string;
}

/**
 * `sdserve build`: builds the GPU engine of a model's versions ahead of serving, so that a start
 * only captures its CUDA graphs. Runs `python -m sdserve_backend.engine.build` per version, which
 * prints each stage and its time and writes `<engine cache>/<model>/<version>/engine.json`. With no GPU it says
 * there is nothing to build and exits 0.
 */
export function registerBuildCommand(program: Command): void {
  program
    .command('build')
    .description('build (or check) the GPU engine of a model: fused attention, tuned kernels, CUDA graphs')
    .requiredOption('--model-repository <dir>', 'model repository folder')
    .requiredOption('--model <name>', 'model to build')
    .option('--version <n>', 'version folder (default: the versions the config\'s version_policy serves)')
    .option('--engine-cache-dir <dir>', 'the engine cache folder the server will use (serve\'s --engine-cache-dir)', defaultEngineCacheDir())
    .option('--force', 'rebuild even when the engine is current (like force_engine_build)')
    .action(async (options: BuildOptions) => {
      process.exitCode = await buildModel(options);
    });
}

async function buildModel(options: BuildOptions): Promise<number> {
  // 1. Find the model and its config, checked as the server checks it
  const repository = path.resolve(options.modelRepository);
  const entry = (await scanRepository(repository)).find((candidate) => candidate.name === options.model);
  if (entry === undefined) {
    process.stderr.write(`error: model '${options.model}' not found in ${repository}\n`);
    return 1;
  }
  if (entry.config === undefined) {
    process.stderr.write(`error: model '${options.model}': ${entry.error ?? 'no config'}\n`);
    return 1;
  }

  // 2. Choose the versions
  const versions = options.version !== undefined ? [Number(options.version)] : resolveVersions(entry.config, entry.versions);
  if (versions.length === 0 || versions.some((version) => !entry.versions.includes(version))) {
    process.stderr.write(`error: model '${options.model}' has no version folder ${options.version ?? ''} in ${entry.dir}\n`);
    return 1;
  }

  // 3. Build each version in the backend's Python
  for (const version of versions) {
    const started = performance.now();
    process.stdout.write(`building ${options.model} version ${version}\n`);
    const args = [
      '-m', 'sdserve_backend.engine.build', '--model-dir', entry.dir, '--version', String(version),
      '--model-config', JSON.stringify(entry.config), '--engine-cache-dir', path.resolve(options.engineCacheDir),
    ];
    if (options.force) args.push('--force');
    const status = await runPython(args);
    if (status !== 0) {
      process.stderr.write(`error: building ${options.model} version ${version} failed (exit ${status})\n`);
      return status;
    }
    process.stdout.write(`${options.model} version ${version}: done in ${((performance.now() - started) / 1000).toFixed(1)} s\n`);
  }
  return 0;
}

function runPython(args: string[]): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn(defaultPythonExecutable(), args, {
      stdio: 'inherit',
      env: { ...process.env, PYTHONPATH: path.join(PROJECT_ROOT, 'python'), PYTHONUNBUFFERED: '1' },
    });
    child.on('error', (err) => {
      process.stderr.write(`error: cannot start Python: ${err.message}\n`);
      resolve(1);
    });
    child.on('close', (code) => resolve(code ?? 1));
  });
}
