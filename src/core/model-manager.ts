import { quoted, SdserveError } from '../errors.js';
import { modelConfigFromJson, resolveVersions, scanRepository, type ModelEntry } from '../repository/index.js';
import type { ModelConfig } from '../repository/model-config-types.js';
import { resolveModelFiles, type ModelFilePolicy } from './model-files.js';
import { requestLimits } from './request-limits.js';
import { executionDeadline } from './execution-deadline.js';
import { notReady, ServedModel, type BackendRuntime } from './served-model.js';
import type { ModelStatistics } from './statistics.js';
import type { ModelStatus } from './types.js';

export type ModelControlMode = 'none' | 'explicit' | 'poll';

interface ModelRecord {
  entry: ModelEntry;
  /** What the model looked like on disk when last loaded, to notice changes when polling. */
  fingerprint?: string;
  versions: Map<number, ServedModel>;
  /** Why the model as a whole cannot load (bad config, no versions), else ''. */
  reason: string;
}

/**
 * The model repository at run time: which models exist, which versions are served, and the
 * load/unload lifecycle (Triton's model control modes).
 */
export class ModelManager {
  private readonly records = new Map<string, ModelRecord>();
  /** Each model's loads and unloads run one after another, in the order they were asked for. */
  private readonly lifecycles = new Map<string, Promise<unknown>>();
  private mode: ModelControlMode = 'none';
  /** Why each startup model that failed to load failed (a name not in the repository included). */
  readonly startFailures: string[] = [];
  private pollTimer: NodeJS.Timeout | undefined;
  private polling: Promise<void> | undefined;

  constructor(
    private readonly repositoryPaths: string[],
    private readonly runtime: BackendRuntime,
    private readonly filePolicy: ModelFilePolicy,
  ) {}

  /** Scans the repository and loads the startup models: all of them in 'none' mode, else those named ('*': all). */
  async start(mode: ModelControlMode, startupModels: string[]): Promise<void> {
    this.mode = mode;
    const entries = await this.scan();
    for (const entry of entries) this.records.set(entry.name, { entry, versions: new Map(), reason: '' });
    const loadAll = mode !== 'explicit' || startupModels.includes('*');
    const names = loadAll ? entries.map((e) => e.name) : startupModels;
    await Promise.all(names.map((name) => this.loadModel(name).catch((err: Error) => {
      this.runtime.logger.error(err.message);
      this.startFailures.push(err.message);
    })));
  }

  /** The repository API may load and unload models in explicit mode only, as in Triton. */
  assertModelControl(): void {
    if (this.mode !== 'explicit') {
      throw new SdserveError('SDS_ERR_MODEL_CONTROL_DISABLED',
        `explicit model load / unload is not allowed in model control mode '${this.mode}'; start with --model-control-mode explicit`);
    }
  }

  /**
   * Poll mode: rescans the repository every `intervalMs`, loading new models, reloading changed
   * ones and unloading removed ones.
   */
  startPolling(intervalMs: number): void {
    this.pollTimer = setInterval(() => {
      this.polling ??= this.pollOnce()
        .catch((err: Error) => this.runtime.logger.error(`repository poll failed: ${err.message}`))
        .finally(() => { this.polling = undefined; });
    }, intervalMs);
    this.pollTimer.unref();
  }

  async pollOnce(): Promise<void> {
    const entries = await this.scan();
    const onDisk = new Set(entries.map((e) => e.name));
    const changes: Array<Promise<void>> = [];
    for (const entry of entries) {
      const record = this.records.get(entry.name);
      if (record && record.fingerprint === fingerprint(entry)) continue;
      this.runtime.logger.info(`repository poll: ${record ? 'reloading' : 'loading'} '${entry.name}'`);
      changes.push(this.loadModel(entry.name).then(() => this.runtime.logger.info(`repository poll: '${entry.name}' is ready`)));
    }
    for (const name of this.records.keys()) {
      if (onDisk.has(name)) continue;
      this.runtime.logger.info(`repository poll: unloading removed model '${name}'`);
      changes.push(this.unloadModel(name).then(() => { this.records.delete(name); }));
    }
    const results = await Promise.allSettled(changes);
    for (const result of results) {
      if (result.status === 'rejected') this.runtime.logger.error((result.reason as Error).message);
    }
  }

  async stop(): Promise<void> {
    clearInterval(this.pollTimer);
    await this.polling;
    await Promise.all([...this.records.keys()].map((name) => this.unloadModel(name).catch(() => undefined)));
  }

  /** Loads (or reloads) a model; resolves when it is READY, rejects with the reason otherwise. */
  loadModel(name: string, configOverride?: string): Promise<void> {
    return this.inLifecycle(name, () => this.doLoad(name, configOverride));
  }

  unloadModel(name: string): Promise<void> {
    return this.inLifecycle(name, () => this.doUnload(name));
  }

  private inLifecycle(name: string, task: () => Promise<void>): Promise<void> {
    const run = (this.lifecycles.get(name) ?? Promise.resolve()).catch(() => undefined).then(task);
    this.lifecycles.set(name, run);
    const forget = () => { if (this.lifecycles.get(name) === run) this.lifecycles.delete(name); };
    run.then(forget, forget);
    return run;
  }

  /** The version a request goes to: the given one if READY, else the newest READY one. */
  resolve(name: string, version?: string): ServedModel {
    const record = this.records.get(name);
    // an unloaded model is as unknown as one never seen, as in Triton
    if (!record || record.versions.size === 0) {
      throw new SdserveError('SDS_ERR_MODEL_NOT_FOUND', `Request for unknown model: ${quoted(name, "'")} is not found`);
    }
    if (version) {
      const served = /^\d+$/.test(version) ? record.versions.get(Number(version)) : undefined;
      if (!served || served.state !== 'READY') throw notReady(name, version, served !== undefined);
      return served;
    }
    const ready = [...record.versions.values()].filter((s) => s.state === 'READY').sort((a, b) => b.version - a.version);
    if (ready.length === 0) {
      // Say why, so a client asking for a model whose load failed hears the load's reason.
      const failed = [...record.versions.values()].find((s) => s.state === 'UNAVAILABLE' && s.reason !== '' && s.reason !== 'unloaded');
      throw notReady(name, undefined, true, failed?.reason);
    }
    return ready[0];
  }

  /** Whether `name` can serve a request now: a stuck or restarting backend makes it not ready. */
  isReady(name: string, version?: string): boolean {
    try {
      return this.resolve(name, version).isServing;
    } catch {
      return false;
    }
  }

  /** Statistics of the loaded versions of `name` (absent: of every model), `version` (absent: all). */
  statistics(name?: string, version?: string): ModelStatistics[] {
    if (name && !this.records.has(name)) {
      throw new SdserveError('SDS_ERR_MODEL_NOT_FOUND', `requested model ${quoted(name, "'")} is not found`);
    }
    const names = name ? [name] : [...this.records.keys()].sort();
    return names.flatMap((n) => [...(this.records.get(n)?.versions.values() ?? [])]
      .filter((served) => !version || String(served.version) === version)
      .sort((a, b) => a.version - b.version)
      .map((served) => served.statistics()));
  }

  /** Backend processes restarted after dying, per loaded model version. */
  backendRestarts(): Array<{ name: string; version: string; restarts: number }> {
    return [...this.records.values()].flatMap((record) => [...record.versions.values()].map((served) => ({
      name: served.config.name, version: String(served.version), restarts: served.backendRestarts,
    })));
  }

  /** Requests waiting for an instance, per loaded model version. */
  pendingRequests(): Array<{ name: string; version: string; pending: number }> {
    return [...this.records.values()].flatMap((record) => [...record.versions.values()].map((served) => ({
      name: served.config.name, version: String(served.version), pending: served.pendingRequests,
    })));
  }

  /** Every model and version known, with its state; models never loaded have version ''. */
  statuses(): ModelStatus[] {
    const rows: ModelStatus[] = [];
    for (const [name, record] of [...this.records].sort(([a], [b]) => a.localeCompare(b))) {
      if (record.versions.size === 0) {
        rows.push({ name, version: '', state: 'UNAVAILABLE', reason: record.reason || 'unloaded' });
        continue;
      }
      for (const served of [...record.versions.values()].sort((a, b) => a.version - b.version)) {
        rows.push({ name, version: String(served.version), state: served.state, reason: served.reason });
      }
    }
    return rows;
  }

  /** Models the server tried to load (for the startup table). */
  attemptedStatuses(): ModelStatus[] {
    return this.statuses().filter((row) => row.version !== '' || this.records.get(row.name)?.reason);
  }

  private async doUnload(name: string): Promise<void> {
    const record = this.records.get(name);
    if (!record) throw new SdserveError('SDS_ERR_MODEL_NOT_FOUND', `failed to unload ${quoted(name, "'")}, no version is available`);
    const versions = [...record.versions.values()];
    record.versions.clear();
    await Promise.all(versions.map((served) => served.unload()));
  }

  /**
   * 1. find and check the new config  2. start the new versions beside the served ones  3. swap
   * them in when all are READY, then let the old ones drain and stop. A reload that fails at any
   * point leaves the served versions serving, as in Triton.
   */
  private async doLoad(name: string, configOverride?: string): Promise<void> {
    const entries = await this.scan();
    const entry = entries.find((e) => e.name === name);
    if (!entry) {
      const names = entries.map((e) => e.name).sort();
      throw new SdserveError('SDS_ERR_MODEL_NOT_FOUND', `failed to load ${quoted(name, "'")}: no model of that name in the repository`
        + `${names.length > 0 ? `; models there: ${names.join(', ')}` : ' (it holds no models)'}`);
    }
    const record: ModelRecord = this.records.get(name) ?? { entry, versions: new Map(), reason: '' };
    this.records.set(name, record);
    record.entry = entry;
    record.fingerprint = fingerprint(entry);
    let config: ModelConfig;
    let versions: Array<{ version: number; modelFile: string }>;
    try {
      ({ config, versions } = await checkedConfig(entry, this.filePolicy, configOverride));
    } catch (err) {
      const reason = err instanceof SyntaxError ? `invalid config override: ${err.message}` : (err as Error).message;
      if (record.versions.size === 0) record.reason = reason;
      throw new SdserveError('SDS_ERR_CONFIG', `failed to load '${name}': ${reason}`);
    }
    const previous = [...record.versions.values()];
    const fresh = new Map(versions.map(({ version, modelFile }) => [
      version, new ServedModel(config, entry.dir, version, modelFile, this.runtime),
    ]));
    // A first load shows its versions LOADING; a reload shows the served ones until the swap.
    if (previous.length === 0) {
      record.reason = '';
      record.versions = fresh;
    }
    await Promise.all([...fresh.values()].map((served) => served.load()));
    const failed = [...fresh.values()].find((served) => served.state !== 'READY');
    if (failed) {
      const failure = `failed to load '${name}' version ${failed.version}: ${failed.reason}`;
      // A config the backend refused is the caller's error (400), as the core's own checks are.
      const code = failed.loadFailure ?? 'SDS_ERR_BACKEND';
      if (previous.length === 0) throw new SdserveError(code, failure);
      await Promise.all([...fresh.values()].map((served) => served.unload()));
      throw new SdserveError(code, `${failure}; the versions loaded before keep serving`);
    }
    record.reason = '';
    record.versions = fresh;
    await Promise.all(previous.map((served) => served.unload()));
  }

  private async scan(): Promise<ModelEntry[]> {
    const all = await Promise.all(this.repositoryPaths.map((p) => scanRepository(p)));
    return all.flat();
  }
}

/** The config to load (the override, else the one on disk) and each version's checked model file. */
async function checkedConfig(entry: ModelEntry, filePolicy: ModelFilePolicy, configOverride?: string): Promise<{
  config: ModelConfig; versions: Array<{ version: number; modelFile: string }>;
}> {
  const config = configOverride === undefined ? entry.config : modelConfigFromJson(JSON.parse(configOverride), entry.name);
  if (!config) throw new SdserveError('SDS_ERR_CONFIG', entry.error ?? `model '${entry.name}' has no usable config.pbtxt`);
  const versions = resolveVersions(config, entry.versions);
  if (versions.length === 0) {
    throw new SdserveError('SDS_ERR_CONFIG', `no version folder of model '${entry.name}' matches its version policy`);
  }
  requestLimits(config);
  executionDeadline(config);
  const modelFiles = await Promise.all(versions.map((version) => resolveModelFiles(config, entry.dir, version, filePolicy)));
  return { config, versions: versions.map((version, i) => ({ version, modelFile: modelFiles[i] })) };
}

function fingerprint(entry: ModelEntry): string {
  return JSON.stringify([entry.config, entry.error, entry.versions]);
}
