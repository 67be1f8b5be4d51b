import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The project folder (this file runs from dist/tests/integration/support/). */
export const PROJECT_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..');
export const SDSERVE_BIN = path.join(PROJECT_ROOT, 'bin', 'sdserve');

export interface ServerProcess {
  url: string;
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Resolves with the first stderr/stdout line after now matching `pattern`. */
  waitForLog(pattern: RegExp, timeoutMs?: number): Promise<string>;
  stop(): Promise<void>;
}

/** Runs the server's command line some other way (e.g. in its own mount namespace). */
export type Launcher = (command: string, args: string[]) => { command: string; args: string[] };

/** Starts `bin/sdserve serve` on a free port and resolves once it prints its HTTP address. */
export async function startServerProcess(args: string[], timeoutMs = 240_000, launcher?: Launcher): Promise<ServerProcess> {
  const direct = {
    command: process.execPath,
    args: [SDSERVE_BIN, 'serve', '--http-port', '0', '--grpc-port', '0', '--metrics-port', '0', '--http-address', '127.0.0.1', ...args],
  };
  const launch = launcher ? launcher(direct.command, direct.args) : direct;
  const child = spawn(launch.command, launch.args, { cwd: PROJECT_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const listeners = new Set<(chunk: string) => void>();
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => { out += chunk; listeners.forEach((l) => l(chunk)); });
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => { err += chunk; listeners.forEach((l) => l(chunk)); });

  const waitForLog = (pattern: RegExp, waitMs = 120_000) => new Promise<string>((resolve, reject) => {
    let buffered = '';
    const timer = setTimeout(() => done(new Error(`no log line matching ${pattern} within ${waitMs} ms\nstdout:\n${out}\nstderr:\n${err}`)), waitMs);
    const onExit = () => done(new Error(`server exited before logging ${pattern}\nstdout:\n${out}\nstderr:\n${err}`));
    const listener = (chunk: string) => {
      buffered += chunk;
      const match = buffered.split('\n').find((line) => pattern.test(line));
      if (match !== undefined) done(undefined, match);
    };
    function done(error?: Error, line?: string) {
      clearTimeout(timer);
      listeners.delete(listener);
      child.off('exit', onExit);
      if (error) reject(error); else resolve(line as string);
    }
    listeners.add(listener);
    child.once('exit', onExit);
  });

  let started: string;
  try {
    started = await waitForLog(/Started HTTPService at /, timeoutMs);
  } catch (err) {
    // A server that never started is the test's to stop: nothing else holds it.
    child.kill('SIGKILL');
    throw err;
  }
  // The address ends the line, or the message of a JSON log line.
  const address = /Started HTTPService at ([^\s"]+)/.exec(started)?.[1] ?? '';
  return {
    url: `http://${address}`,
    child,
    stdout: () => out,
    stderr: () => err,
    waitForLog,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/**
 * A throw-away model repository: the built-in tiny models linked in, plus extra models written
 * from `{name: {config, files}}`.
 */
export function makeRepository(extra: Record<string, { config: string; files?: Record<string, string> }> = {},
  builtIn: string[] = ['tiny_sd']): { dir: string; remove(): void } {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sdserve-repo-'));
  for (const name of builtIn) symlinkSync(path.join(PROJECT_ROOT, 'model_repository', name), path.join(dir, name));
  for (const [name, model] of Object.entries(extra)) {
    mkdirSync(path.join(dir, name, '1'), { recursive: true });
    writeFileSync(path.join(dir, name, 'config.pbtxt'), model.config);
    for (const [file, text] of Object.entries(model.files ?? {})) {
      mkdirSync(path.dirname(path.join(dir, name, file)), { recursive: true });
      writeFileSync(path.join(dir, name, file), text);
    }
  }
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

