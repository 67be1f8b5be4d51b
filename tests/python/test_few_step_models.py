"""Few-step models on tiny variants: LCM-distilled UNets (the guidance scale embedded as a timestep
condition), SD-Turbo / SDXL-Turbo (their Euler ancestral "trailing" scheduler, guidance 0, 1-4
steps) and an LCM-LoRA per request with the LCM scheduler. Each image equals diffusers' pipeline's
for the same weights, seed and scheduler, exactly on the CPU in float32 (up to one uint8 level);
LCM rows share UNet calls with each other like any rows; and the weights give the model its
few-step defaults (steps, guidance) that the backend declares."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    EulerAncestralDiscreteScheduler,
    LatentConsistencyModelPipeline,
    LCMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

from sdserve_backend.backends.diffusion import capabilities
from sdserve_backend.backends.diffusion import settings as model_settings
from sdserve_backend.pipelines import GenerationRequest, GenerationSettings, TextToImagePipeline, load_components
from sdserve_backend.pipelines.few_step import few_step_defaults
from sdserve_backend.tiny_lora import make_tiny_lcm_lora
from sdserve_backend.tiny_model import make_tiny_model

SIZE = 64
PROMPT = "a photo of the cat"

_pipelines: dict[str, TextToImagePipeline] = {}


@pytest.fixture(scope="module")
def few_step_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("few_step_models")
    return {variant: make_tiny_model(root / variant, variant, seed=0)
            for variant in ("sd-lcm", "sdxl-lcm", "sd-turbo", "sdxl-turbo")}


def ours(variant: str, dirs: dict[str, Path], lora_dir: Path | None = None) -> TextToImagePipeline:
    key = f"{variant}:{lora_dir}"
    if key not in _pipelines:
        components = load_components(dirs[variant], torch.device("cpu"), torch.float32)
        _pipelines[key] = TextToImagePipeline(components, lora_dir=lora_dir)
    return _pipelines[key]


def to_uint8(images: np.ndarray) -> np.ndarray:
    return (images * 255).round().astype(np.uint8)


def differs(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


@pytest.mark.parametrize(("steps", "guidance"), [(4, 8.5), (2, 1.0), (1, 3.0)])
def test_lcm_unet_matches_diffusers_latent_consistency_pipeline(steps: int, guidance: float,
                                                                 few_step_dirs: dict[str, Path]) -> None:
    pipeline = ours("sd-lcm", few_step_dirs)
    assert pipeline.components.guidance_embedding_dim == 64
    reference = LatentConsistencyModelPipeline.from_pretrained(
        few_step_dirs["sd-lcm"], local_files_only=True, safety_checker=None, requires_safety_checker=False)
    reference.set_progress_bar_config(disable=True)
    expected = reference(PROMPT, num_inference_steps=steps, guidance_scale=guidance, height=SIZE, width=SIZE,
                         generator=generator(7), output_type="np").images
    [image] = pipeline([GenerationRequest(prompts=[PROMPT], seed=7)], GenerationSettings(SIZE, SIZE, steps, guidance))
    assert differs(image[0], to_uint8(expected[0])) <= 1


def test_sdxl_lcm_unet_matches_diffusers(few_step_dirs: dict[str, Path]) -> None:
    pipeline = ours("sdxl-lcm", few_step_dirs)
    reference = StableDiffusionXLPipeline.from_pretrained(few_step_dirs["sdxl-lcm"], local_files_only=True)
    reference.set_progress_bar_config(disable=True)
    assert isinstance(reference.scheduler, LCMScheduler)
    expected = reference(PROMPT, num_inference_steps=4, guidance_scale=8.5, height=SIZE, width=SIZE,
                         generator=generator(3), output_type="np").images
    [image] = pipeline([GenerationRequest(prompts=[PROMPT], seed=3)], GenerationSettings(SIZE, SIZE, 4, 8.5))
    assert differs(image[0], to_uint8(expected[0])) <= 1


def test_lcm_rows_with_different_guidance_share_a_unet_call_and_keep_their_images(
        few_step_dirs: dict[str, Path]) -> None:
    pipeline = ours("sd-lcm", few_step_dirs)
    strong, weak = GenerationSettings(SIZE, SIZE, 4, 8.5), GenerationSettings(SIZE, SIZE, 4, 2.0)
    first, second = GenerationRequest(prompts=[PROMPT], seed=1), GenerationRequest(prompts=[PROMPT, "a dog"], seed=2)
    alone = pipeline([first], strong)[0]
    second_alone = pipeline([second], weak)[0]
    # The two requests stepped together, each with its own guidance embedding, as the step batcher does.
    states = [pipeline.prepare(pipeline.task, first, strong), pipeline.prepare(pipeline.task, second, weak)]
    calls: list[int] = []
    handle = pipeline.components.unet.register_forward_pre_hook(lambda _m, args: calls.append(int(args[0].shape[0])))
    try:
        while not all(state.done for state in states):
            pipeline.denoise_batch(states)
    finally:
        handle.remove()
    # One row per image (no negative rows: the guidance is embedded), all of them in each call.
    assert calls == [3, 3, 3, 3]
    assert differs(alone, pipeline.decode(states[0].latents)) <= 1
    assert differs(second_alone, pipeline.decode(states[1].latents)) <= 1
    # Another guidance scale is another embedding, so another image.
    assert differs(alone, pipeline([first], weak)[0]) >= 4


@pytest.mark.parametrize(("variant", "steps"), [("sd-turbo", 1), ("sd-turbo", 4), ("sdxl-turbo", 1), ("sdxl-turbo", 2)])
def test_turbo_models_match_diffusers_at_guidance_zero(variant: str, steps: int, few_step_dirs: dict[str, Path]) -> None:
    pipeline = ours(variant, few_step_dirs)
    pipeline_class = StableDiffusionXLPipeline if variant.startswith("sdxl") else StableDiffusionPipeline
    extra = {} if variant.startswith("sdxl") else {"safety_checker": None, "requires_safety_checker": False}
    reference = pipeline_class.from_pretrained(few_step_dirs[variant], local_files_only=True, **extra)
    reference.set_progress_bar_config(disable=True)
    assert isinstance(reference.scheduler, EulerAncestralDiscreteScheduler)
    assert reference.scheduler.config.timestep_spacing == "trailing"
    expected = reference(PROMPT, num_inference_steps=steps, guidance_scale=0.0, height=SIZE, width=SIZE,
                         generator=generator(5), output_type="np").images
    calls: list[int] = []
    handle = pipeline.components.unet.register_forward_pre_hook(lambda _m, args: calls.append(int(args[0].shape[0])))
    try:
        [image] = pipeline([GenerationRequest(prompts=[PROMPT], seed=5)], GenerationSettings(SIZE, SIZE, steps, 0.0))
    finally:
        handle.remove()
    assert calls == [1] * steps  # guidance 0: one row per image, no unconditional rows
    assert differs(image[0], to_uint8(expected[0])) <= 1


def test_lcm_lora_per_request_matches_diffusers_load_lora_weights(tiny_model_dirs: dict[str, Path],
                                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    lora_dir = tmp_path_factory.mktemp("lcm_lora")
    make_tiny_lcm_lora(tiny_model_dirs["sd"], lora_dir / "tiny_lcm_lora.safetensors")
    pipeline = ours("sd", tiny_model_dirs, lora_dir)
    settings = GenerationSettings(SIZE, SIZE, 4, 1.0, "lcm")
    with_lora = GenerationRequest(prompts=[PROMPT], seed=9, loras=pipeline.loras.choose((("tiny_lcm_lora", 1.0),)))
    plain = GenerationRequest(prompts=[PROMPT], seed=9)
    image, without = pipeline([with_lora, plain], settings)

    reference = StableDiffusionPipeline.from_pretrained(tiny_model_dirs["sd"], local_files_only=True,
                                                        safety_checker=None, requires_safety_checker=False)
    reference.set_progress_bar_config(disable=True)
    reference.scheduler = LCMScheduler.from_config(reference.scheduler.config)
    reference.load_lora_weights(str(lora_dir), weight_name="tiny_lcm_lora.safetensors", adapter_name="lcm")
    expected = reference(PROMPT, num_inference_steps=4, guidance_scale=1.0, height=SIZE, width=SIZE,
                         generator=generator(9), output_type="np").images
    assert differs(image[0], to_uint8(expected[0])) <= 2
    # The LoRA's rows shared the batch with a plain request, which got the plain image.
    assert differs(image, without) > 8


@pytest.mark.parametrize(("variant", "kind", "steps", "guidance"), [
    ("sd-turbo", "turbo", 1, 0.0), ("sdxl-turbo", "turbo", 1, 0.0), ("sd-lcm", "lcm", 4, 8.5), ("sd", None, 30, 7.5),
])
def test_few_step_weights_give_the_declared_defaults_unless_the_config_sets_them(
        variant: str, kind: str | None, steps: int, guidance: float, few_step_dirs: dict[str, Path],
        tiny_model_dirs: dict[str, Path]) -> None:
    dirs = {**few_step_dirs, **tiny_model_dirs}
    components = ours(variant, dirs).components
    found = few_step_defaults(components)
    assert (found.kind if found is not None else None) == kind
    weights = (found.steps, found.guidance_scale) if found is not None else ()
    defaults = model_settings.read_model_defaults({}, components.default_image_size, *weights)
    declared = capabilities.declare(defaults, 4, 999)["parameters"]
    assert (declared["steps"]["default"], declared["guidance_scale"]["default"]) == (steps, guidance)
    configured = model_settings.read_model_defaults({"steps": "8", "guidance_scale": "2"}, 128, *weights)
    assert (configured.settings.steps, configured.settings.guidance_scale) == (8, 2.0)
