import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { Command, Option } from 'commander';
import { defaultPythonExecutable, PROJECT_ROOT } from '../paths.js';

/** `sdserve make-tiny-model`: writes the built-in tiny model (random weights, fixed seed). */
export function registerMakeTinyModelCommand(program: Command): void {
  program
    .command('make-tiny-model')
    .description('create the built-in tiny SD-architecture model as a diffusers folder')
    .requiredOption('--out <dir>', 'output folder, e.g. model_repository/tiny_sd/1')
    .addOption(new Option('--variant <variant>', 'architecture').choices(['sd', 'sdxl', 'sd-inpaint', 'sdxl-inpaint', 'sd21', 'sdxl_refiner']).default('sd'))
    .option('--seed <n>', 'seed for the random weights', '0')
    .action((options: { out: string; variant: string; seed: string }) => {
      const result = spawnSync(defaultPythonExecutable(), [
        '-m', 'sdserve_backend.tiny_model', '--out', path.resolve(options.out), '--variant', options.variant, '--seed', options.seed,
      ], { stdio: 'inherit', env: { ...process.env, PYTHONPATH: path.join(PROJECT_ROOT, 'python') } });
      process.exitCode = result.status ?? 1;
    });
}
