"""The pipeline's input checks and scheduler lookup."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, PNDMScheduler

from sdserve_backend.pipelines import (
    GenerationRequest,
    GenerationSettings,
    TextToImagePipeline,
    load_components,
    make_scheduler,
    resolve_scheduler_class,
    split_per_request,
)

PipelineLoader = Callable[[str], TextToImagePipeline]
GOOD = GenerationSettings(height=128, width=128, steps=4, guidance_scale=7.5)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (GenerationSettings(100, 128, 4, 7.5), "height must be a positive multiple of 8, got 100"),
        (GenerationSettings(128, 0, 4, 7.5), "width must be a positive multiple of 8, got 0"),
        (GenerationSettings(128, 128, 0, 7.5), "steps must be an integer from 1 to 999, got 0"),
        (GenerationSettings(128, 128, 1000, 7.5, "pndm"), "steps must be an integer from 1 to 999, got 1000"),
        (GenerationSettings(128, 128, 4, float("nan")), "guidance_scale must be a finite number >= 0, got nan"),
        (GenerationSettings(128, 128, 4, 7.5, "warp"), "scheduler 'warp' is not supported"),
    ],
)
def test_bad_settings_are_refused_naming_argument_and_value(
    settings: GenerationSettings, message: str, load_tiny_pipeline: PipelineLoader
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_tiny_pipeline("sd").check_inputs([GenerationRequest(["a cat"], seed=0)], settings)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (GenerationRequest([], seed=0), "prompt must hold at least one prompt"),
        (GenerationRequest(["a", "b"], seed=0, negative_prompts=["x"]), "negative_prompt must hold one entry per prompt"),
        (GenerationRequest(["a"], seed=-1), "seed must be an integer from 0 to"),
    ],
)
def test_bad_requests_are_refused(
    request_: GenerationRequest, message: str, load_tiny_pipeline: PipelineLoader
) -> None:
    with pytest.raises(ValueError, match=message):
        load_tiny_pipeline("sd").check_inputs([request_], GOOD)


def test_good_inputs_pass_the_checks(load_tiny_pipeline: PipelineLoader) -> None:
    load_tiny_pipeline("sdxl").check_inputs(
        [GenerationRequest(["a", "b"], seed=2**64 - 1, negative_prompts=[None, "x"])],
        GenerationSettings(64, 192, 1, 0.0, "euler_a"),
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("", PNDMScheduler),
        ("euler", EulerDiscreteScheduler),
        ("EULER_A", EulerAncestralDiscreteScheduler),
        ("DDIMScheduler", DDIMScheduler),
    ],
)
def test_scheduler_names_resolve_to_diffusers_classes(name: str, expected: type) -> None:
    assert resolve_scheduler_class(name, PNDMScheduler) is expected


def test_a_swapped_scheduler_keeps_the_models_noise_schedule_and_prediction_type() -> None:
    model_config = dict(
        PNDMScheduler(beta_schedule="scaled_linear", beta_end=0.012, steps_offset=1, prediction_type="v_prediction").config
    )

    scheduler = make_scheduler("euler", PNDMScheduler, model_config)

    assert isinstance(scheduler, EulerDiscreteScheduler)
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.beta_end == 0.012


def test_split_per_request_hands_each_request_its_own_images() -> None:
    images = np.arange(3).reshape(3, 1, 1, 1).astype(np.uint8)
    requests = [GenerationRequest(["a"], 0), GenerationRequest(["b", "c"], 1)]

    parts = split_per_request(images, requests)

    assert [part.reshape(-1).tolist() for part in parts] == [[0], [1, 2]]


def test_a_broken_single_file_checkpoint_or_config_folder_says_what_is_wrong(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"")

    with pytest.raises(ValueError, match="model.safetensors is not a readable .safetensors checkpoint"):
        load_components(checkpoint, torch.device("cpu"), torch.float32)
    with pytest.raises(FileNotFoundError, match="config folder .* has no model_index.json"):
        load_components(checkpoint, torch.device("cpu"), torch.float32, config_dir=tmp_path)


def test_a_folder_without_model_index_is_not_taken_for_a_model(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a diffusers model folder"):
        load_components(tmp_path, torch.device("cpu"), torch.float32)
