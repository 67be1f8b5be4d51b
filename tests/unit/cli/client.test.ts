import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Command, CommanderError } from 'commander';
import { registerClientCommand } from '../../../src/cli/client.js';

/** A program with the client command whose action only records the parsed options. */
function programRecordingOptions(): { program: Command; parsed: () => Record<string, unknown> } {
  const program = new Command().exitOverride().configureOutput({ writeErr: () => {}, writeOut: () => {} });
  registerClientCommand(program);
  const client = program.commands.find((command) => command.name() === 'client');
  assert.ok(client, 'client command registered');
  client.exitOverride();
  let options: Record<string, unknown> = {};
  client.action((opts: Record<string, unknown>) => { options = opts; });
  return { program, parsed: () => options };
}

test('client options have the tutorial defaults and omit unset generation parameters', async () => {
  const { program, parsed } = programRecordingOptions();
  await program.parseAsync(['client'], { from: 'user' });
  const options = parsed();
  assert.equal(options.model, 'tiny_sd');
  assert.equal(options.clients, 1);
  assert.equal(options.requests, 1);
  assert.equal(options.staticBatchSize, 1);
  assert.equal(options.saveImage, false);
  assert.equal(options.outputDir, '.');
  assert.equal(options.url, 'localhost:8000'); // runClient adds the scheme
  assert.equal(options.progress, true);
  assert.equal(typeof options.prompt, 'string');
  for (const name of ['steps', 'seed', 'guidanceScale', 'scheduler', 'width', 'height', 'negativePrompt']) {
    assert.equal(options[name], undefined, name);
  }
});

test('client options parse numbers, URLs and --no-progress', async () => {
  const { program, parsed } = programRecordingOptions();
  await program.parseAsync([
    'client', '--clients', '3', '--requests', '5', '--static-batch-size', '2', '--steps', '20',
    '--seed', '0', '--guidance-scale', '7.5', '--width', '512', '--height', '384',
    '--url', 'https://sd.example:9000/', '--no-progress', '--save-image',
  ], { from: 'user' });
  const options = parsed();
  assert.equal(options.clients, 3);
  assert.equal(options.requests, 5);
  assert.equal(options.staticBatchSize, 2);
  assert.equal(options.steps, 20);
  assert.equal(options.seed, 0);
  assert.equal(options.guidanceScale, 7.5);
  assert.equal(options.width, 512);
  assert.equal(options.height, 384);
  assert.equal(options.url, 'https://sd.example:9000');
  assert.equal(options.progress, false);
  assert.equal(options.saveImage, true);
});

test('client options take a step range, a request rate, a summary file and step bars', async () => {
  const { program, parsed } = programRecordingOptions();
  await program.parseAsync([
    'client', '--steps', '20-50', '--request-rate', '2.5', '--summary-json', 'run.json', '--step-progress',
  ], { from: 'user' });
  const options = parsed();
  assert.deepEqual(options.steps, { min: 20, max: 50 });
  assert.equal(options.requestRate, 2.5);
  assert.equal(options.summaryJson, 'run.json');
  assert.equal(options.stepProgress, true);
});

for (const [args, message] of [
  [['--clients', '0'], /--clients <n>' argument '0' is invalid\. expected an integer >= 1/],
  [['--requests', '2.5'], /--requests <n>' argument '2\.5' is invalid\. expected an integer/],
  [['--static-batch-size', 'two'], /--static-batch-size <n>' argument 'two' is invalid/],
  [['--seed', '-1'], /--seed <n>' argument '-1' is invalid\. expected an integer >= 0/],
  [['--guidance-scale', 'NaN'], /--guidance-scale <x>' argument 'NaN' is invalid\. expected a number >= 0/],
  [['--steps', '50-20'], /--steps <n\|min-max>' argument '50-20' is invalid\. expected MIN-MAX with 1 <= MIN <= MAX/],
  [['--request-rate', '0'], /--request-rate <r>' argument '0' is invalid\. expected a number > 0/],
  [['--url', 'ftp://host:21'], /--url <host:port>' argument 'ftp:\/\/host:21' is invalid\. expected an http or https URL/],
] as const) {
  test(`client rejects ${args.join(' ')} with a clear message`, async () => {
    const { program } = programRecordingOptions();
    await assert.rejects(program.parseAsync(['client', ...args], { from: 'user' }), (error: unknown) => {
      assert.ok(error instanceof CommanderError);
      assert.equal(error.code, 'commander.invalidArgument');
      assert.match(error.message, message);
      return true;
    });
  });
}
