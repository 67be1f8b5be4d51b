"""Scheduler variants by name (Karras sigmas, SDE solvers, LCM, TCD) and few-step generation
(guidance 0 or 1, 1-4 steps, as SD-Turbo and LCM-LoRA are run): each named variant is the diffusers
scheduler its documentation gives for that sampler, and the pipeline's images equal those of
diffusers' StableDiffusionPipeline with that scheduler, exactly on the CPU in float32."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    SchedulerMixin,
    StableDiffusionPipeline,
    TCDScheduler,
)

from sdserve_backend.pipelines import GenerationRequest, GenerationSettings, TextToImagePipeline, canonical_scheduler_name
from sdserve_backend.pipelines.schedulers import make_scheduler, max_scheduler_steps

SIZE = 64
PROMPT = "a red circle above a blue square"

# What diffusers' scheduler documentation gives for each A1111 / k-diffusion sampler, built here
# independently of the server's table.
EXPECTED: dict[str, Callable[[dict[str, Any]], SchedulerMixin]] = {
    "euler_karras": lambda c: EulerDiscreteScheduler.from_config(c, use_karras_sigmas=True),
    "heun_karras": lambda c: HeunDiscreteScheduler.from_config(c, use_karras_sigmas=True),
    "dpm++_2m": lambda c: DPMSolverMultistepScheduler.from_config(c),
    "dpm++_2m_karras": lambda c: DPMSolverMultistepScheduler.from_config(c, use_karras_sigmas=True),
    "dpm++_2m_sde": lambda c: DPMSolverMultistepScheduler.from_config(c, algorithm_type="sde-dpmsolver++"),
    "dpm++_2m_sde_karras": lambda c: DPMSolverMultistepScheduler.from_config(
        c, algorithm_type="sde-dpmsolver++", use_karras_sigmas=True),
    "dpm++_sde": lambda c: DPMSolverSDEScheduler.from_config(c),
    "dpm++_sde_karras": lambda c: DPMSolverSDEScheduler.from_config(c, use_karras_sigmas=True),
    "dpm2": lambda c: KDPM2DiscreteScheduler.from_config(c),
    "dpm2_karras": lambda c: KDPM2DiscreteScheduler.from_config(c, use_karras_sigmas=True),
    "dpm2_a": lambda c: KDPM2AncestralDiscreteScheduler.from_config(c),
    "dpm2_a_karras": lambda c: KDPM2AncestralDiscreteScheduler.from_config(c, use_karras_sigmas=True),
    "lcm": lambda c: LCMScheduler.from_config(c),
    "tcd": lambda c: TCDScheduler.from_config(c),
}


@pytest.fixture(scope="module")
def sd(load_tiny_pipeline: Callable[[str], TextToImagePipeline], tiny_model_dirs: dict[str, Path]
       ) -> tuple[TextToImagePipeline, StableDiffusionPipeline]:
    reference = StableDiffusionPipeline.from_pretrained(tiny_model_dirs["sd"], local_files_only=True)
    reference.set_progress_bar_config(disable=True)
    return load_tiny_pipeline("sd"), reference


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_variant_is_the_scheduler_diffusers_documents(
    name: str, sd: tuple[TextToImagePipeline, StableDiffusionPipeline]
) -> None:
    ours, _ = sd
    config = ours.components.scheduler_config
    made = make_scheduler(name, ours.components.scheduler_class, config)
    expected = EXPECTED[name](config)
    assert type(made) is type(expected)
    settings = lambda scheduler: {k: v for k, v in scheduler.config.items() if not k.startswith("_")}  # noqa: E731
    assert settings(made) == settings(expected)
    made.set_timesteps(4)
    expected.set_timesteps(4)
    assert torch.equal(made.timesteps, expected.timesteps)


def reference_image(reference: StableDiffusionPipeline, scheduler: SchedulerMixin, steps: int, guidance: float,
                    seed: int) -> np.ndarray:
    reference.scheduler = scheduler
    images = reference(PROMPT, num_inference_steps=steps, guidance_scale=guidance, height=SIZE, width=SIZE,
                       generator=torch.Generator(device="cpu").manual_seed(seed), output_type="np").images
    return (images[0] * 255).round().astype(np.uint8)


@pytest.mark.parametrize(("name", "steps", "guidance"), [
    ("euler_karras", 4, 7.5),
    ("dpm++_2m_karras", 4, 7.5),
    ("dpm++_2m_sde_karras", 4, 7.5),  # stochastic: noise from the request's generator
    ("dpm2_a_karras", 3, 7.5),
    ("dpm++_sde", 3, 7.5),  # stochastic: a Brownian tree seeded with the request's seed
    ("dpm++_sde_karras", 4, 7.5),
    ("lcm", 4, 1.0),  # LCM-LoRA style: guidance 1 is none
    ("lcm", 1, 0.0),
    ("tcd", 2, 0.0),
    ("euler_a", 1, 0.0),  # SD-Turbo style: one step, no guidance
    ("euler", 2, 0.0),
])
def test_variants_and_few_step_generation_match_diffusers(
    name: str, steps: int, guidance: float, sd: tuple[TextToImagePipeline, StableDiffusionPipeline]
) -> None:
    ours, reference = sd
    config = ours.components.scheduler_config
    expected_scheduler = EXPECTED[name](config) if name in EXPECTED else make_scheduler(
        name, ours.components.scheduler_class, config)
    if isinstance(expected_scheduler, DPMSolverSDEScheduler):
        # diffusers draws its Brownian tree's seed at random unless the config gives one.
        expected_scheduler = DPMSolverSDEScheduler.from_config(expected_scheduler.config, noise_sampler_seed=11)
    expected = reference_image(reference, expected_scheduler, steps, guidance, seed=11)
    [image] = ours([GenerationRequest(prompts=[PROMPT], seed=11)], GenerationSettings(SIZE, SIZE, steps, guidance, name))
    assert image.shape == (1, SIZE, SIZE, 3)
    difference = np.abs(image[0].astype(int) - expected.astype(int)).max()
    assert difference <= 1, f"{name}: max difference {difference}"


def test_lcm_and_tcd_refuse_more_steps_than_their_schedule_naming_it(
    sd: tuple[TextToImagePipeline, StableDiffusionPipeline]
) -> None:
    ours, _ = sd
    for name in ("lcm", "tcd"):
        assert max_scheduler_steps(name, ours.components.scheduler_class, ours.components.scheduler_config) == 50
        with pytest.raises(ValueError, match=rf"steps must be an integer from 1 to 50 with scheduler '{name}', got 51"):
            ours([GenerationRequest(prompts=[PROMPT], seed=1)], GenerationSettings(SIZE, SIZE, 51, 1.0, name))
    with pytest.raises(ValueError, match="scheduler 'euler_exotic' is not supported"):
        ours([GenerationRequest(prompts=[PROMPT], seed=1)], GenerationSettings(SIZE, SIZE, 2, 1.0, "euler_exotic"))


def test_variants_batch_apart_and_spellings_of_one_scheduler_together(
    sd: tuple[TextToImagePipeline, StableDiffusionPipeline]
) -> None:
    default = sd[0].components.scheduler_class
    assert canonical_scheduler_name("euler", default) == canonical_scheduler_name("EulerDiscreteScheduler", default)
    assert canonical_scheduler_name("Euler_Karras", default) == "euler_karras"
    assert len({canonical_scheduler_name(name, default) for name in EXPECTED}) == len(EXPECTED)


@pytest.mark.parametrize("name", ["dpm++_sde_karras", "dpm++_2m_sde", "euler_a"])
def test_stochastic_schedulers_give_a_request_the_same_image_alone_or_batched(
    name: str, sd: tuple[TextToImagePipeline, StableDiffusionPipeline]
) -> None:
    """A request's step noise comes from its own seed over its own rows: batched with another
    request (another seed, two prompts) it gets the image it gets alone (up to the UNet's float
    rounding at another batch size), and another seed another."""
    ours, _ = sd
    settings = GenerationSettings(SIZE, SIZE, 3, 7.5, name)
    alone = ours([GenerationRequest(prompts=[PROMPT], seed=5)], settings)[0]
    again = ours([GenerationRequest(prompts=[PROMPT], seed=5)], settings)[0]
    other, batched = ours([GenerationRequest(prompts=[PROMPT, "a green dog"], seed=6),
                           GenerationRequest(prompts=[PROMPT], seed=5)], settings)
    assert np.array_equal(alone, again)
    assert np.abs(alone.astype(int) - batched.astype(int)).max() <= 1
    assert np.abs(alone[0].astype(int) - other[0].astype(int)).max() > 16
