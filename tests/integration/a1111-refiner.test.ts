/**
 * Automatic1111's refiner fields on the A1111 routes, through the real server: a tiny SDXL base
 * whose config names the tiny refiner of its repository. `refiner_checkpoint` naming that refiner
 * with `refiner_switch_at` gives the image the generate route gives for the same request with
 * `high_noise_fraction`; without a checkpoint the base runs every step, as in A1111 (the generate
 * route keeps the config's default); sd-models lists the refiner, and its title is taken back as
 * `refiner_checkpoint`; a wrong name, a model without a refiner, img2img and a switch the refiner
 * cannot take are 400s saying so.
 */
import assert from 'node:assert/strict';
import { symlinkSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { PNG } from 'pngjs';

import { makeRepository, PROJECT_ROOT, startServerProcess, type ServerProcess } from './support/server-process.js';

const BASE = 'tiny_sdxl_refined';
const REFINER = 'tiny_sdxl_refiner';
// Small and few steps: two of the base's, two of the refiner's at a switch of 0.5.
const REQUEST = {
  prompt: 'a red fox in the snow', negative_prompt: 'blurry', seed: 77, steps: 4, cfg_scale: 5, width: 64, height: 64,
  override_settings: { sd_model_checkpoint: BASE },
};

/** tiny_sdxl's config with the config parameter `refiner` naming the tiny refiner. */
function baseConfig(): string {
  const config = readFileSync(path.join(PROJECT_ROOT, 'model_repository', 'tiny_sdxl', 'config.pbtxt'), 'utf8');
  return config.replace('parameters [', `parameters [\n  { key: "refiner" value: { string_value: "${REFINER}" } },`);
}

/** A PNG's pixels (RGBA, as pngjs decodes every PNG). */
function pixels(base64: string): Buffer {
  return PNG.sync.read(Buffer.from(base64, 'base64')).data;
}

/** A PNG's `parameters` tEXt chunk (Automatic1111's generation parameters), if it has one. */
function parametersText(base64: string): string | undefined {
  const file = Buffer.from(base64, 'base64');
  for (let offset = 8; offset + 8 <= file.length;) {
    const length = file.readUInt32BE(offset);
    const data = file.subarray(offset + 8, offset + 8 + length);
    if (file.toString('latin1', offset + 4, offset + 8) === 'tEXt' && data.toString('latin1').startsWith('parameters\0')) {
      return data.toString('latin1').slice('parameters\0'.length);
    }
    offset += 12 + length;
  }
  return undefined;
}

describe('A1111 refiner_checkpoint and refiner_switch_at', () => {
  let server: ServerProcess;
  let repository: ReturnType<typeof makeRepository>;

  const post = async (route: string, body: object) => {
    const response = await fetch(`${server.url}${route}`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
    });
    return { status: response.status, body: await response.json() as Record<string, any> };
  };

  /** One txt2img image's pixels, its infotext, and the parameters its PNG carries. */
  const txt2img = async (fields: object) => {
    const { status, body } = await post('/sdapi/v1/txt2img', { ...REQUEST, ...fields });
    assert.equal(status, 200, JSON.stringify(body));
    assert.equal(body.images.length, 1);
    return {
      pixels: pixels(body.images[0]), infotext: JSON.parse(body.info).infotexts[0] as string, pngText: parametersText(body.images[0]),
    };
  };

  /** One generate-route image (REQUEST in the generate route's terms) and the parameters its PNG carries. */
  const generate = async (parameters: object) => {
    const { status, body } = await post(`/v2/models/${BASE}/generate`, {
      prompt: REQUEST.prompt, negative_prompt: REQUEST.negative_prompt, seed: REQUEST.seed, steps: REQUEST.steps,
      guidance_scale: REQUEST.cfg_scale, width: REQUEST.width, height: REQUEST.height, ...parameters,
    });
    assert.equal(status, 200, JSON.stringify(body));
    const files = [body.generated_image].flat() as string[];
    assert.equal(files.length, 1);
    return { pixels: pixels(files[0]), pngText: parametersText(files[0]) };
  };

  before(async () => {
    repository = makeRepository({ [BASE]: { config: baseConfig() } }, ['tiny_sd', REFINER]);
    // The base's weights are tiny_sdxl's own.
    rmSync(path.join(repository.dir, BASE, '1'), { recursive: true });
    symlinkSync(path.join(PROJECT_ROOT, 'model_repository', 'tiny_sdxl', '1'), path.join(repository.dir, BASE, '1'));
    // The base loads its refiner's weights itself: the refiner need not be served on its own.
    server = await startServerProcess(['--model-repository', repository.dir, '--model-control-mode', 'explicit',
      '--load-model', BASE, '--load-model', 'tiny_sd']);
  });
  after(async () => {
    await server?.stop();
    repository?.remove();
  });

  test('the base model declares its refiner by name', async () => {
    const response = await fetch(`${server.url}/v2/models/${BASE}/capabilities`);
    assert.equal(response.status, 200);
    const capabilities = await response.json() as Record<string, unknown>;
    assert.equal(capabilities.refiner, REFINER);
    const plain = await (await fetch(`${server.url}/v2/models/tiny_sd/capabilities`)).json() as Record<string, unknown>;
    assert.equal(plain.refiner, undefined);
  });

  test('the refiner named, with a switch, gives the image of generate with that high_noise_fraction, not the base\'s', async () => {
    const refined = await txt2img({ refiner_checkpoint: REFINER, refiner_switch_at: 0.5 });
    const generated = await generate({ high_noise_fraction: 0.5 });
    assert.ok(refined.pixels.equals(generated.pixels), 'A1111 refiner image differs from generate\'s with high_noise_fraction 0.5');
    assert.match(refined.infotext, /, Model: tiny_sdxl_refined, Refiner: tiny_sdxl_refiner, Refiner switch at: 0\.5$/);
    assert.match(refined.pngText ?? '', /, Model: tiny_sdxl_refined, Refiner: tiny_sdxl_refiner, Refiner switch at: 0\.5$/);

    // A1111's title form of the same checkpoint; a switch of 1 leaves every step to the base.
    const baseOnly = await txt2img({ refiner_checkpoint: `${REFINER}.safetensors [0123abcdef]`, refiner_switch_at: 1 });
    assert.equal(baseOnly.pixels.length, refined.pixels.length);
    assert.ok(!baseOnly.pixels.equals(refined.pixels), 'the refiner changed nothing');
    assert.doesNotMatch(baseOnly.infotext, /Refiner/);
    assert.match(baseOnly.pngText ?? '', /, Model: tiny_sdxl_refined$/);
  });

  test('without a checkpoint ("", null or A1111\'s "None") the base runs every step, the switch ignored, as in A1111', async () => {
    const baseAlone = await generate({ high_noise_fraction: 1 });
    const unnamed = await txt2img({});
    assert.ok(unnamed.pixels.equals(baseAlone.pixels), 'txt2img without refiner_checkpoint is not the base-only image');
    assert.match(unnamed.infotext, /, Model: tiny_sdxl_refined$/);
    assert.match(unnamed.pngText ?? '', /, Model: tiny_sdxl_refined$/);
    for (const checkpoint of ['', null, 'None']) {
      const ignored = await txt2img({ refiner_checkpoint: checkpoint, refiner_switch_at: 0.5 });
      assert.ok(ignored.pixels.equals(baseAlone.pixels), `refiner_checkpoint ${JSON.stringify(checkpoint)} with a switch is not the base-only image`);
      assert.doesNotMatch(ignored.infotext, /Refiner/);
    }
    // The generate route keeps the config's default: its refiner at 0.8.
    const configured = await generate({});
    assert.ok(!configured.pixels.equals(baseAlone.pixels), 'generate without high_noise_fraction ran no refiner');
    assert.match(configured.pngText ?? '', /, Model: tiny_sdxl_refined, Refiner: tiny_sdxl_refiner, Refiner switch at: 0\.8$/);
  });

  test('sd-models lists the refiner once, served or not, and its title is taken back as refiner_checkpoint', async () => {
    const listed = async () => {
      const response = await fetch(`${server.url}/sdapi/v1/sd-models`);
      assert.equal(response.status, 200);
      return await response.json() as Array<Record<string, unknown>>;
    };
    const models = await listed();
    assert.deepEqual(models.map((model) => model.model_name), [BASE, 'tiny_sd', REFINER].sort());
    const refiner = models.find((model) => model.model_name === REFINER)!;
    assert.equal(typeof refiner.title, 'string');

    const chosen = await txt2img({ refiner_checkpoint: refiner.title, refiner_switch_at: 0.5 });
    assert.ok(chosen.pixels.equals((await generate({ high_noise_fraction: 0.5 })).pixels),
      'the refiner chosen by its sd-models title gives another image than generate\'s with high_noise_fraction 0.5');
    assert.match(chosen.infotext, /, Refiner: tiny_sdxl_refiner, Refiner switch at: 0\.5$/);

    // Served on its own too, it is still one checkpoint.
    const load = await fetch(`${server.url}/v2/repository/models/${REFINER}/load`, { method: 'POST' });
    assert.equal(load.status, 200, await load.text());
    try {
      assert.deepEqual((await listed()).map((model) => model.model_name), [BASE, 'tiny_sd', REFINER].sort());
    } finally {
      await fetch(`${server.url}/v2/repository/models/${REFINER}/unload`, { method: 'POST' });
    }
  });

  test('a wrong name, a model without refiner, img2img or a switch the refiner cannot take is a 400 saying so', async () => {
    const cases: Array<[string, object, string]> = [
      ['/sdapi/v1/txt2img', { refiner_checkpoint: 'sd_xl_refiner_1.0.safetensors [7440042bbd]', refiner_switch_at: 0.5 },
        `txt2img: "refiner_checkpoint" "sd_xl_refiner_1.0.safetensors [7440042bbd]" is not the refiner of model '${BASE}': its refiner is '${REFINER}'`],
      ['/sdapi/v1/txt2img', { refiner_checkpoint: REFINER, refiner_switch_at: 0.5, override_settings: { sd_model_checkpoint: 'tiny_sd' } },
        `txt2img: "refiner_checkpoint" "${REFINER}": model 'tiny_sd' has no refiner (its config parameter "refiner" names none); leave it empty`],
      ['/sdapi/v1/txt2img', { refiner_checkpoint: REFINER, refiner_switch_at: 0 },
        'txt2img: "refiner_switch_at" 0 leaves every step to the refiner, which sdserve runs only after the base'],
      ['/sdapi/v1/txt2img', { refiner_checkpoint: REFINER, refiner_switch_at: 1.5 }, 'refiner_switch_at must be <= 1'],
      ['/sdapi/v1/txt2img', { refiner_checkpoint: REFINER, refiner_switch_at: '0.5' }, 'refiner_switch_at must be number'],
      ['/sdapi/v1/txt2img', { refiner_checkpoint: REFINER, refiner_switch_at: 0.05 }, 'leaves the base no step to run'],
      ['/sdapi/v1/img2img', { refiner_checkpoint: REFINER, refiner_switch_at: 0.5, init_images: ['iVBORw0KGgo='] },
        'img2img: "refiner_checkpoint" "tiny_sdxl_refiner": sdserve runs a refiner after text-to-image only; leave it empty for img2img'],
    ];
    for (const [route, fields, message] of cases) {
      const { status, body } = await post(route, { ...REQUEST, ...fields });
      assert.equal(status, 400, `${JSON.stringify(fields)}: ${JSON.stringify(body)}`);
      assert.ok(String(body.error).includes(message), `${JSON.stringify(fields)}: ${body.error}`);
    }
  });
});
