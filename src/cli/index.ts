import { Command } from 'commander';
import { SERVER_VERSION } from '../core/index.js';
import { registerBuildCommand } from './build.js';
import { registerClientCommand } from './client.js';
import { registerMakeTinyModelCommand } from './make-tiny-model.js';
import { registerServeCommand } from './serve.js';

const program = new Command('sdserve')
  .description('Triton-compatible text-to-image inference server')
  .version(SERVER_VERSION);
registerServeCommand(program);
registerClientCommand(program);
registerMakeTinyModelCommand(program);
registerBuildCommand(program);

program.parseAsync(process.argv).catch((err: Error) => {
  process.stderr.write(`error: ${err.message}\n`);
  process.exit(1);
});
