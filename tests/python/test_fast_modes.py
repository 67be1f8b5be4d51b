"""The fast modes of the shared denoise step (pipelines/denoise.py): a guidance interval and
feature caching across steps. Each is exact at its neutral setting, changes the UNet's work as
it says when on, and stays close to the exact image; the step batcher gives the same image as
the plain pipeline with them on."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np
import pytest
import torch

from sdserve_backend.backends.diffusion import settings as model_settings
from sdserve_backend.pipelines import GenerationRequest, GenerationSettings, StepBatcher, TextToImagePipeline
from sdserve_backend.pipelines import feature_cache

PipelineLoader = Callable[[str], TextToImagePipeline]
REQUEST = GenerationRequest(["a cat in the snow", "a red house"], seed=1234, negative_prompts=["blurry", None])
STEPS = 8


def psnr(first: np.ndarray, second: np.ndarray) -> float:
    error = np.mean((first.astype(np.float64) - second.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255.0**2 / error))


class RecordingUNet:
    """The real UNet, recording how many rows each plain call had and which split forward ran."""

    def __init__(self, unet: Any) -> None:
        self.unet = unet
        self.calls: list[tuple[str, int]] = []

    @property
    def model(self) -> Any:
        return self.unet

    def __getattr__(self, name: str) -> Any:
        return getattr(self.unet, name)

    def __call__(self, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(("full", sample.shape[0]))
        return self.unet(sample, *args, **kwargs)

    def forward_keeping_features(self, sample: torch.Tensor, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append(("keep", sample.shape[0]))
        return feature_cache.forward_keeping_features(self.unet, sample, *args)

    def forward_from_features(self, sample: torch.Tensor, *args: Any) -> torch.Tensor:
        self.calls.append(("reuse", sample.shape[0]))
        return feature_cache.forward_from_features(self.unet, sample, *args)


def run_recorded(pipeline: TextToImagePipeline, settings: GenerationSettings) -> tuple[np.ndarray, list[tuple[str, int]]]:
    recording = RecordingUNet(pipeline.components.unet)
    original = pipeline.components
    pipeline.components = dataclasses.replace(original, unet=recording)
    try:
        [images] = pipeline([REQUEST], settings)
    finally:
        pipeline.components = original
    return images, recording.calls


def unet_inputs(pipeline: TextToImagePipeline, rows: int) -> dict[str, Any]:
    unet = pipeline.components.unet
    generator = torch.Generator().manual_seed(0)
    inputs: dict[str, Any] = {
        "sample": torch.randn((rows, unet.config.in_channels, 16, 16), generator=generator),
        "timestep": torch.tensor([500.0, 20.0, 999.0][:rows]),
        "encoder_hidden_states": torch.randn((rows, 77, unet.config.cross_attention_dim), generator=generator),
        "added_cond_kwargs": None,
    }
    if pipeline.components.is_sdxl:
        text_width = unet.add_embedding.linear_1.in_features - 6 * unet.config.addition_time_embed_dim
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.randn((rows, text_width), generator=generator),
            "time_ids": torch.tensor([[128.0, 128.0, 0.0, 0.0, 128.0, 128.0]] * rows),
        }
    return inputs


@pytest.mark.parametrize("variant", ["sd", "sdxl"])
def test_the_split_unet_computes_the_models_own_forward(variant: str, load_tiny_pipeline: PipelineLoader) -> None:
    pipeline = load_tiny_pipeline(variant)
    unet = pipeline.components.unet
    inputs = unet_inputs(pipeline, rows=3)
    assert feature_cache.supports(unet)
    with torch.inference_mode():
        expected = unet(inputs["sample"], inputs["timestep"], encoder_hidden_states=inputs["encoder_hidden_states"],
                        added_cond_kwargs=inputs["added_cond_kwargs"], return_dict=False)[0]
        full, features = feature_cache.forward_keeping_features(unet, **inputs)
        # The outer blocks over the same step's own features give the full prediction again.
        rebuilt = feature_cache.forward_from_features(unet, features=features, **inputs)
    assert torch.equal(full, expected)
    assert features.shape[0] == 3
    assert torch.equal(rebuilt, expected)


@pytest.mark.parametrize("variant", ["sd", "sdxl"])
def test_the_neutral_settings_are_exact(variant: str, load_tiny_pipeline: PipelineLoader) -> None:
    pipeline = load_tiny_pipeline(variant)
    exact = GenerationSettings(64, 64, STEPS, 6.0, "euler")
    images, calls = run_recorded(pipeline, exact)
    neutral, neutral_calls = run_recorded(
        pipeline, dataclasses.replace(exact, guidance_start=0.0, guidance_end=1.0, cache_interval=1)
    )
    assert np.array_equal(images, neutral)
    assert calls == neutral_calls == [("full", 4)] * STEPS


@pytest.mark.parametrize("variant", ["sd", "sdxl"])
def test_a_guidance_interval_runs_one_row_per_image_outside_it(variant: str, load_tiny_pipeline: PipelineLoader) -> None:
    pipeline = load_tiny_pipeline(variant)
    exact = GenerationSettings(64, 64, STEPS, 6.0, "euler")
    reference, _ = run_recorded(pipeline, exact)
    images, calls = run_recorded(pipeline, dataclasses.replace(exact, guidance_start=0.25, guidance_end=0.75))
    # Steps 0-1 and 6-7 of 8 are outside [0.25, 0.75): the two images' positive rows alone.
    assert calls == [("full", 2)] * 2 + [("full", 4)] * 4 + [("full", 2)] * 2
    assert not np.array_equal(images, reference)
    # Guidance off on the last quarter changes little; a model told to ignore guidance changes more.
    late_only, _ = run_recorded(pipeline, dataclasses.replace(exact, guidance_end=0.75))
    unguided, _ = run_recorded(pipeline, dataclasses.replace(exact, guidance_scale=1.0))
    assert psnr(late_only, reference) > psnr(unguided, reference)


@pytest.mark.parametrize("variant", ["sd", "sdxl"])
def test_feature_caching_reuses_deep_features_between_full_steps(variant: str, load_tiny_pipeline: PipelineLoader) -> None:
    pipeline = load_tiny_pipeline(variant)
    exact = GenerationSettings(64, 64, STEPS, 6.0, "euler")
    reference, _ = run_recorded(pipeline, exact)
    images, calls = run_recorded(pipeline, dataclasses.replace(exact, cache_interval=3))
    assert calls == [("keep", 4), ("reuse", 4), ("reuse", 4)] * 2 + [("keep", 4), ("reuse", 4)]
    assert not np.array_equal(images, reference)
    # Closer to the exact image than a run with half the steps.
    fewer_steps, _ = run_recorded(pipeline, dataclasses.replace(exact, steps=STEPS // 2))
    assert psnr(images, reference) > psnr(fewer_steps, reference)
    assert psnr(images, reference) > 20


def test_a_guidance_interval_boundary_runs_the_next_step_in_full(load_tiny_pipeline: PipelineLoader) -> None:
    # The kept features are per row: at the boundary the rows change from four to two.
    pipeline = load_tiny_pipeline("sd")
    settings = GenerationSettings(64, 64, STEPS, 6.0, "euler", guidance_end=0.5, cache_interval=4)
    _, calls = run_recorded(pipeline, settings)
    assert calls == [("keep", 4), ("reuse", 4), ("reuse", 4), ("reuse", 4), ("keep", 2), ("reuse", 2),
                     ("reuse", 2), ("reuse", 2)]
    settings = dataclasses.replace(settings, guidance_end=0.625)
    _, calls = run_recorded(pipeline, settings)
    assert calls == [("keep", 4), ("reuse", 4), ("reuse", 4), ("reuse", 4), ("keep", 4), ("keep", 2),
                     ("reuse", 2), ("reuse", 2)]


@pytest.mark.parametrize("variant", ["sd", "sdxl"])
def test_the_step_batcher_gives_the_same_fast_image_beside_exact_requests(
    variant: str, load_tiny_pipeline: PipelineLoader
) -> None:
    pipeline = load_tiny_pipeline(variant)
    fast = GenerationSettings(64, 64, STEPS, 6.0, "euler_a", guidance_start=0.1, guidance_end=0.8, cache_interval=2)
    exact = GenerationSettings(64, 64, 5, 4.0, "ddim")
    other = GenerationRequest(["a blue car"], seed=8)
    [alone] = pipeline([REQUEST], fast)
    [other_alone] = pipeline([other], exact)
    batcher = StepBatcher(pipeline, max_images=4)
    try:
        outcomes: list[Future[np.ndarray]] = [Future(), Future()]
        for outcome, (request, settings) in zip(outcomes, [(REQUEST, fast), (other, exact)], strict=True):
            batcher.submit(request, settings, lambda result, outcome=outcome: outcome.set_result(result))
        together, other_together = (outcome.result(120) for outcome in outcomes)
    finally:
        batcher.close()
    # The CPU's convolutions may round differently for another row count (the batcher's calls hold
    # both requests' rows): at most one level of one pixel here.
    assert np.abs(together.astype(np.int16) - alone).max() <= 1
    assert np.abs(other_together.astype(np.int16) - other_alone).max() <= 1
    assert psnr(together, alone) > 50


def test_requests_and_configs_set_the_fast_modes() -> None:
    defaults = model_settings.read_model_defaults(
        {"guidance_start": "0.1", "guidance_end": "0.9", "cache_interval": "3"}, 512
    )
    assert (defaults.settings.guidance_start, defaults.settings.guidance_end, defaults.settings.cache_interval) == (0.1, 0.9, 3)
    settings, _ = model_settings.read_request_overrides('{"guidance_end": 0.5, "cache_interval": 1}', defaults)
    assert (settings.guidance_start, settings.guidance_end, settings.cache_interval) == (0.1, 0.5, 1)
    with pytest.raises(ValueError, match="parameter 'guidance_start' must be a number from 0 to 1, got 1.5"):
        model_settings.read_request_overrides('{"guidance_start": 1.5}', defaults)
    with pytest.raises(ValueError, match="parameter 'cache_interval' must be an integer from 1 to 999, got 0"):
        model_settings.read_request_overrides('{"cache_interval": 0}', defaults)
    with pytest.raises(ValueError, match="config parameter 'guidance_end' must be a number from 0 to 1"):
        model_settings.read_model_defaults({"guidance_end": "two"}, 512)


def test_a_guidance_interval_that_ends_before_it_starts_is_refused(load_tiny_pipeline: PipelineLoader) -> None:
    pipeline = load_tiny_pipeline("sd")
    settings = GenerationSettings(64, 64, STEPS, 6.0, guidance_start=0.8, guidance_end=0.2)
    with pytest.raises(ValueError, match="0 <= guidance_start <= guidance_end <= 1, got 0.8 and 0.2"):
        pipeline([REQUEST], settings)
