"""Every scheduler a request may choose runs the most steps the model accepts; more is refused
up front (1000 steps with DDIM, PNDM or DDPM used to fail with IndexError inside the run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sdserve_backend.backends.diffusion import settings as model_settings
from sdserve_backend.pipelines.schedulers import (
    SCHEDULER_SHORT_NAMES,
    SCHEDULER_VARIANTS,
    available_short_names,
    make_scheduler,
    max_inference_steps,
    max_scheduler_steps,
    supported_scheduler_names,
)


VARIANTS = [name for name in available_short_names() if SCHEDULER_VARIANTS[name].options]


@pytest.mark.parametrize("name", supported_scheduler_names() + VARIANTS)
def test_each_scheduler_runs_the_most_steps_accepted(name: str, tiny_model_dirs: dict[str, Path]) -> None:
    config = json.loads((tiny_model_dirs["sd"] / "scheduler" / "scheduler_config.json").read_text())
    assert max_inference_steps(config) == model_settings.MAX_STEPS == 999
    steps = max_scheduler_steps(name, type(None), config)  # type: ignore[arg-type]
    # LCM and TCD pick their timesteps from a 50-step distillation schedule
    assert steps == (50 if SCHEDULER_SHORT_NAMES.get(name, name) in {"LCMScheduler", "TCDScheduler"} else 999)
    scheduler = make_scheduler(name, type(None), config)  # type: ignore[arg-type]
    scheduler.set_timesteps(steps)
    latents = torch.zeros(1, 4, 4, 4)
    for timestep in scheduler.timesteps:
        model_input = scheduler.scale_model_input(latents, timestep)
        latents = scheduler.step(torch.zeros_like(model_input), timestep, latents, return_dict=False)[0]
    assert latents.shape == (1, 4, 4, 4)
    if steps < 999:
        with pytest.raises(ValueError):  # what the check before the run spares the request
            make_scheduler(name, type(None), config).set_timesteps(steps + 1)  # type: ignore[arg-type]


def test_a_thousand_steps_is_refused_naming_the_range() -> None:
    with pytest.raises(ValueError, match=r"parameter 'steps' must be an integer from 1 to 999, got 1000"):
        model_settings.parse_steps(1000, 30, "parameter")
