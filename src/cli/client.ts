/**
 * `sdserve client`: a load generator and smoke client compatible with the flags and output of
 * Triton's Stable Diffusion tutorial client (`client.py`).
 */
import { Command, Option } from 'commander';
import {
  parseNonNegativeInteger, parseNonNegativeNumber, parsePositiveInteger, parsePositiveNumber,
  parseServerUrl, parseSteps, parseStrength,
} from './client-options.js';
import {
  DEFAULT_MODEL, DEFAULT_PROMPT, DEFAULT_URL, runClient, type ClientOptions,
} from './client-runner.js';

export { runClient } from './client-runner.js';
export type { ClientOptions, ClientResult, ClientSummary } from './client-runner.js';

/**
 * Adds the `client` subcommand to `program`. Its action is async, so the root program must be
 * run with `parseAsync`. Any failed request makes the process exit with status 1.
 */
export function registerClientCommand(program: Command): void {
  program
    .command('client')
    .description('send text-to-image requests to a running server and report throughput and latency')
    .option('--model <name>', 'model to query', DEFAULT_MODEL)
    .option('--prompt <text>', 'prompt sent in every request', DEFAULT_PROMPT)
    .option('--negative-prompt <text>', 'negative prompt sent in every request')
    .option('--clients <n>', 'concurrent clients', parsePositiveInteger, 1)
    .option('--requests <n>', 'requests sent by each client', parsePositiveInteger, 1)
    .option('--request-rate <r>',
      'open loop: send requests as Poisson arrivals at r requests/s in total, without waiting for answers',
      parsePositiveNumber)
    .option('--static-batch-size <n>', 'prompts per request', parsePositiveInteger, 1)
    .option('--save-image', 'save every image as client_{i}_generated_image_{j}[_{k}].jpg', false)
    .option('--output-dir <dir>', 'folder for saved images', '.')
    .addOption(new Option('--url <host:port>', 'server address (host:port or http(s) URL)')
      .default(DEFAULT_URL).argParser(parseServerUrl))
    .option('--steps <n|min-max>', 'denoising steps, or a range each request draws from uniformly', parseSteps)
    .option('--seed <n>', 'random seed', parseNonNegativeInteger)
    .option('--guidance-scale <x>', 'classifier-free guidance scale', parseNonNegativeNumber)
    .option('--scheduler <name>', 'scheduler name')
    .option('--width <n>', 'image width in pixels', parsePositiveInteger)
    .option('--height <n>', 'image height in pixels', parsePositiveInteger)
    .option('--image <file>', 'image-to-image: input image (PNG, JPEG, WebP) sent with every request')
    .option('--mask <file>', 'inpainting: mask image (white = repaint), with --image')
    .option('--strength <x>', 'image-to-image/inpainting: how much of the schedule runs from the image, (0, 1]', parseStrength)
    .option('--no-progress', 'do not draw progress bars')
    .option('--step-progress', 'bars over each request\'s denoising steps (requests go through generate_stream)', false)
    .option('--summary-json <file>', 'also write the summary (throughput, latency percentiles) as JSON')
    .action(async (options: ClientOptions) => {
      const summary = await runClient(options);
      if (summary.failed > 0) process.exitCode = 1;
    });
}
