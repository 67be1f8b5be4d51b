"""Stable Diffusion 2.1 (v-prediction, OpenCLIP-style text encoder, "!" padding) end to end on the
tiny `sd21` variant: the pipeline's images equal diffusers' `StableDiffusionPipeline` and
`StableDiffusionImg2ImgPipeline` (CPU, float32, same weights, seed and scheduler), and a real
server's images equal them too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

from image_inputs import generated_pixels, picture, png_base64
from sdserve_backend.pipelines import (
    GenerationRequest,
    GenerationSettings,
    TextToImagePipeline,
    detect_version,
    load_components,
    make_scheduler,
)
from sdserve_backend.tiny_model import make_tiny_model
from sdserve_server import PROJECT_ROOT, ServerAddresses, http_json, make_repository, serving

SIZE = 64
STEPS = 5
PROMPT = "a photo of the cat"
NEGATIVE = "blurry"
# Max abs difference in uint8 levels: float32 rounding may flip a level, as in the other
# tests against diffusers (test_pipeline_matches_diffusers.py).
TOLERANCE = 2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("sd21") / "1", "sd21", seed=0)


@pytest.fixture(scope="module")
def ours(model_dir: Path) -> TextToImagePipeline:
    return TextToImagePipeline(load_components(model_dir, torch.device("cpu"), torch.float32))


def as_uint8(images: np.ndarray) -> np.ndarray:
    return (images * 255).round().astype(np.uint8)


def assert_matches(ours: np.ndarray, expected: np.ndarray) -> None:
    assert ours.shape == expected.shape and ours.dtype == expected.dtype == np.uint8
    assert int(np.abs(ours.astype(np.int16) - expected.astype(np.int16)).max()) <= TOLERANCE


def reference(pipeline_class: type, model_dir: Path, ours: TextToImagePipeline, scheduler: str):  # noqa: ANN202
    pipeline = pipeline_class.from_pretrained(model_dir, local_files_only=True, safety_checker=None,
                                              requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    parts = ours.components
    pipeline.scheduler = make_scheduler(scheduler, parts.scheduler_class, parts.scheduler_config)
    return pipeline


def test_the_tiny_model_is_stable_diffusion_2_1(ours: TextToImagePipeline) -> None:
    parts = ours.components
    assert parts.scheduler_config["prediction_type"] == "v_prediction"
    assert parts.scheduler_class.__name__ == "DDIMScheduler"
    assert parts.text_encoder.config.hidden_act == "gelu"
    assert parts.unet.config.use_linear_projection and parts.unet.config.upcast_attention
    assert parts.tokenizer.pad_token == "!"
    assert not parts.is_sdxl


@pytest.mark.parametrize("scheduler", ["", "euler", "dpm++_2m_karras"])
@pytest.mark.parametrize(("guidance_scale", "negative"), [(7.5, NEGATIVE), (1.0, None)], ids=["guided", "unguided"])
def test_text_to_image_matches_diffusers(model_dir: Path, ours: TextToImagePipeline, scheduler: str,
                                         guidance_scale: float, negative: str | None) -> None:
    [image] = ours([GenerationRequest([PROMPT], seed=3, negative_prompts=[negative])],
                   GenerationSettings(SIZE, SIZE, STEPS, guidance_scale, scheduler))

    expected = reference(StableDiffusionPipeline, model_dir, ours, scheduler)(
        PROMPT, negative_prompt=negative, num_inference_steps=STEPS, guidance_scale=guidance_scale, height=SIZE,
        width=SIZE, generator=torch.Generator("cpu").manual_seed(3), output_type="np",
    ).images
    assert_matches(image, as_uint8(expected))


@pytest.mark.parametrize("scheduler", ["", "euler_a"])
def test_image_to_image_matches_diffusers(model_dir: Path, ours: TextToImagePipeline, scheduler: str) -> None:
    init = picture(4, SIZE)
    [image] = ours([GenerationRequest([PROMPT], seed=9, negative_prompts=[NEGATIVE], images=(init,), strength=0.6)],
                   GenerationSettings(SIZE, SIZE, STEPS, 6.0, scheduler))

    expected = reference(StableDiffusionImg2ImgPipeline, model_dir, ours, scheduler)(
        PROMPT, image=init, strength=0.6, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=6.0,
        generator=torch.Generator("cpu").manual_seed(9), output_type="np",
    ).images
    assert_matches(image, as_uint8(expected))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerAddresses]:
    """A server of `tiny_sd21` as the repository ships it (its config, weights made here)."""
    model = tmp_path_factory.mktemp("tiny_sd21")
    (model / "config.pbtxt").write_text((PROJECT_ROOT / "model_repository" / "tiny_sd21" / "config.pbtxt").read_text())
    make_tiny_model(model / "1", "sd21", seed=0)
    repository = make_repository(tmp_path_factory.mktemp("sd21_server") / "repo", {"tiny_sd21": model})
    with serving(repository) as addresses:
        yield addresses


def test_the_server_draws_what_diffusers_draws(server: ServerAddresses, model_dir: Path,
                                               ours: TextToImagePipeline) -> None:
    status, reply = http_json(server, "POST", "/v2/models/tiny_sd21/generate", {
        "prompt": PROMPT, "negative_prompt": NEGATIVE, "steps": STEPS, "seed": 21, "height": SIZE, "width": SIZE})
    assert status == 200, reply

    expected = reference(StableDiffusionPipeline, model_dir, ours, "")(
        PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=7.5, height=SIZE, width=SIZE,
        generator=torch.Generator("cpu").manual_seed(21), output_type="np",
    ).images
    assert_matches(generated_pixels(reply), as_uint8(expected)[0])


def test_the_server_runs_image_to_image_as_diffusers_does(server: ServerAddresses, model_dir: Path,
                                                          ours: TextToImagePipeline) -> None:
    init = picture(6, SIZE)
    status, reply = http_json(server, "POST", "/v2/models/tiny_sd21/generate", {
        "prompt": PROMPT, "image": png_base64(init), "strength": 0.7, "steps": STEPS, "seed": 5})
    assert status == 200, reply

    expected = reference(StableDiffusionImg2ImgPipeline, model_dir, ours, "")(
        PROMPT, image=init, strength=0.7, num_inference_steps=STEPS, guidance_scale=7.5,
        generator=torch.Generator("cpu").manual_seed(5), output_type="np",
    ).images
    assert_matches(generated_pixels(reply), as_uint8(expected)[0])


def test_the_server_tells_the_version_and_defaults(server: ServerAddresses, ours: TextToImagePipeline) -> None:
    assert detect_version(ours.components) is None  # the tiny encoder is not 1024 wide; the config says 2.1
    status, reply = http_json(server, "GET", "/v2/models/tiny_sd21/capabilities")
    assert status == 200, reply
    assert isinstance(reply, dict) and reply["parameters"]["guidance_scale"]["default"] == 7.5
