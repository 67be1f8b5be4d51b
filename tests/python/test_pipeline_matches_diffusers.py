"""The pipeline's images equal those of diffusers' own pipelines for the same inputs.

Reference: `StableDiffusionPipeline` / `StableDiffusionXLPipeline` with output_type="np", turned
into uint8 as `(x * 255).round()`. Both run on the CPU in float32 on the tiny models.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

from sdserve_backend.pipelines import (
    GenerationRequest,
    GenerationSettings,
    TextToImagePipeline,
    load_components,
    make_scheduler,
)

TOLERANCE = 2  # max abs difference in uint8 levels
STEPS = 4
SIZE = 128
PROMPT = "a photo of the cat"
OTHER_PROMPT = "a dog on the moon"

PipelineLoader = Callable[[str], TextToImagePipeline]
_references: dict[str, DiffusionPipeline] = {}


def reference_pipeline(variant: str, folder: Path) -> DiffusionPipeline:
    if variant not in _references:
        pipeline_class = StableDiffusionXLPipeline if variant == "sdxl" else StableDiffusionPipeline
        _references[variant] = pipeline_class.from_pretrained(folder, local_files_only=True)
        _references[variant].set_progress_bar_config(disable=True)
    return _references[variant]


def reference_images(
    reference: DiffusionPipeline,
    ours: TextToImagePipeline,
    prompts: list[str],
    negative: str | None,
    seed: int,
    guidance_scale: float,
    scheduler: str = "",
) -> np.ndarray:
    parts = ours.components
    reference.scheduler = make_scheduler(scheduler, parts.scheduler_class, parts.scheduler_config)
    images = reference(
        prompts,
        negative_prompt=None if negative is None else [negative] * len(prompts),
        num_inference_steps=STEPS,
        guidance_scale=guidance_scale,
        height=SIZE,
        width=SIZE,
        generator=torch.Generator(device="cpu").manual_seed(seed),
        output_type="np",
    ).images
    return (images * 255).round().astype(np.uint8)


def our_images(
    ours: TextToImagePipeline,
    requests: list[GenerationRequest],
    guidance_scale: float,
    scheduler: str = "",
) -> list[np.ndarray]:
    return ours(requests, GenerationSettings(SIZE, SIZE, STEPS, guidance_scale, scheduler))


def request(prompts: list[str], seed: int, negative: str | None = None) -> GenerationRequest:
    return GenerationRequest(prompts=prompts, seed=seed, negative_prompts=[negative] * len(prompts))


def max_difference(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


@pytest.fixture(params=["sd", "sdxl"])
def variant(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize(
    ("guidance_scale", "negative"),
    [(7.5, "blurry, low quality"), (5.0, None), (1.0, None)],
    ids=["guided-with-negative", "guided-without-negative", "unguided"],
)
def test_single_image_matches_diffusers(
    variant: str,
    guidance_scale: float,
    negative: str | None,
    load_tiny_pipeline: PipelineLoader,
    tiny_model_dirs: dict[str, Path],
) -> None:
    ours = load_tiny_pipeline(variant)
    reference = reference_pipeline(variant, tiny_model_dirs[variant])

    [image] = our_images(ours, [request([PROMPT], seed=7, negative=negative)], guidance_scale)

    expected = reference_images(reference, ours, [PROMPT], negative, seed=7, guidance_scale=guidance_scale)
    assert image.shape == (1, SIZE, SIZE, 3)
    assert max_difference(image, expected) <= TOLERANCE


def test_two_prompts_with_one_seed_match_diffusers(
    variant: str, load_tiny_pipeline: PipelineLoader, tiny_model_dirs: dict[str, Path]
) -> None:
    ours = load_tiny_pipeline(variant)
    reference = reference_pipeline(variant, tiny_model_dirs[variant])

    [images] = our_images(ours, [request([PROMPT, OTHER_PROMPT], seed=11, negative="ugly")], 6.0)

    expected = reference_images(reference, ours, [PROMPT, OTHER_PROMPT], "ugly", seed=11, guidance_scale=6.0)
    assert images.shape == (2, SIZE, SIZE, 3)
    assert max_difference(images, expected) <= TOLERANCE


@pytest.mark.parametrize("scheduler", ["", "euler_a"])
def test_requests_with_different_seeds_in_one_batch_equal_each_run_alone(
    variant: str, scheduler: str, load_tiny_pipeline: PipelineLoader
) -> None:
    ours = load_tiny_pipeline(variant)
    first = request([PROMPT], seed=1, negative="blurry")
    second = request([OTHER_PROMPT, PROMPT], seed=2)

    batched = our_images(ours, [first, second], 7.5, scheduler)

    [alone_first] = our_images(ours, [first], 7.5, scheduler)
    [alone_second] = our_images(ours, [second], 7.5, scheduler)
    assert [images.shape for images in batched] == [(1, SIZE, SIZE, 3), (2, SIZE, SIZE, 3)]
    assert max_difference(batched[0], alone_first) <= TOLERANCE
    assert max_difference(batched[1], alone_second) <= TOLERANCE


@pytest.mark.parametrize("scheduler", ["euler_a", "dpm++", "ddim", "UniPCMultistepScheduler"])
def test_other_schedulers_match_diffusers(
    scheduler: str, load_tiny_pipeline: PipelineLoader, tiny_model_dirs: dict[str, Path]
) -> None:
    ours = load_tiny_pipeline("sd")
    reference = reference_pipeline("sd", tiny_model_dirs["sd"])

    [image] = our_images(ours, [request([PROMPT], seed=3)], 7.5, scheduler)

    expected = reference_images(reference, ours, [PROMPT], None, seed=3, guidance_scale=7.5, scheduler=scheduler)
    assert max_difference(image, expected) <= TOLERANCE


def test_v_prediction_model_matches_diffusers(
    load_tiny_pipeline: PipelineLoader, tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    # Stable Diffusion 2.x (768) predicts v; only the scheduler config says so.
    folder = tmp_path / "v_prediction"
    shutil.copytree(tiny_model_dirs["sd"], folder)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "prediction_type": "v_prediction"}))
    ours = TextToImagePipeline(load_components(folder, torch.device("cpu"), torch.float32))
    reference = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    reference.set_progress_bar_config(disable=True)

    [image] = our_images(ours, [request([PROMPT], seed=5)], 7.5, "euler")

    expected = reference_images(reference, ours, [PROMPT], None, seed=5, guidance_scale=7.5, scheduler="euler")
    assert max_difference(image, expected) <= TOLERANCE
    [epsilon_image] = our_images(load_tiny_pipeline("sd"), [request([PROMPT], seed=5)], 7.5, "euler")
    assert max_difference(image, epsilon_image) > TOLERANCE


def test_prompt_seed_and_guidance_each_change_the_image(variant: str, load_tiny_pipeline: PipelineLoader) -> None:
    # Guards the comparisons above: were an input ignored, they could not tell.
    ours = load_tiny_pipeline(variant)
    [base] = our_images(ours, [request([PROMPT], seed=1)], 7.5)

    [other_prompt] = our_images(ours, [request([OTHER_PROMPT], seed=1)], 7.5)
    [other_seed] = our_images(ours, [request([PROMPT], seed=2)], 7.5)
    [other_guidance] = our_images(ours, [request([PROMPT], seed=1)], 2.0)

    assert max_difference(base, other_prompt) > TOLERANCE
    assert max_difference(base, other_seed) > TOLERANCE
    assert max_difference(base, other_guidance) > TOLERANCE
