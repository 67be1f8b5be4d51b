"""The denoising loop's one step, shared by every task and every way of running them.

A task (`pipelines/tasks/`) turns a request into a `DenoisingState`: its own scheduler and
timesteps, its initial latents, its text conditioning and guidance scale. `denoise_step` then
advances any number of states by one step of their own schedulers with ONE UNet call for all of
them: the plain pipeline steps one batch's states together, the step batcher steps whatever
requests are in flight, and request-level batching runs the plain pipeline. So there is one
implementation of the recipe, and an image does not depend on how it was run.

Each state brings its rows (its latents, twice under guidance with the unconditional rows first),
its own timestep for each row (the UNet takes one timestep per sample) and its own conditioning.
Guidance and the scheduler step then run per state on its share of the prediction, so each state
advances exactly as it would alone. Nothing here waits on the device (no host syncs).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import SchedulerMixin


@dataclass
class DenoisingState:
    """One request part-way through the denoising loop."""

    scheduler: SchedulerMixin
    latents: torch.Tensor
    timesteps: torch.Tensor
    # The same timesteps on the CPU: schedulers index their CPU tables with them, and a device
    # timestep there would force a host sync every step.
    timesteps_on_host: torch.Tensor
    # Under guidance: the negative rows first, then the positive ones.
    encoder_hidden_states: torch.Tensor
    added_cond_kwargs: dict[str, torch.Tensor] | None
    guidance_scale: float
    step_kwargs: dict[str, Any] = field(default_factory=dict)
    step_index: int = 0
    # Seams for tasks beyond text-to-image. `extra_channels` is appended to the scaled model input
    # along the channels (an inpainting UNet's mask and masked-image latents), one row per latent;
    # `after_step` runs after each scheduler step (say, to blend the known region back in).
    extra_channels: torch.Tensor | None = None
    after_step: Callable[[DenoisingState], None] | None = None
    # Runs on the decoded images, uint8 [B, H, W, 3] (inpainting pastes the unmasked pixels back).
    after_decode: Callable[[np.ndarray], np.ndarray] | None = None
    # The request's LoRAs (`lora_layers.ChosenLora`), applied to its rows of each UNet call.
    loras: Sequence[Any] = ()

    @property
    def done(self) -> bool:
        return self.step_index >= len(self.timesteps)

    @property
    def guided(self) -> bool:
        return self.guidance_scale > 1.0

    @property
    def rows(self) -> int:
        """The rows this state has in a UNet call (its latents twice under guidance)."""
        return int(self.latents.shape[0]) * (2 if self.guided else 1)

    def completed_steps(self, steps: int) -> int:
        """How many of the caller's `steps` are done. Some schedulers take more than one UNet
        evaluation per step (Heun: two; PNDM: one extra at the start)."""
        return self.step_index * steps // len(self.timesteps)


def start_denoising(
    scheduler: SchedulerMixin,
    latents: torch.Tensor,
    generators: list[torch.Generator],
    encoder_hidden_states: torch.Tensor,
    added_cond_kwargs: dict[str, torch.Tensor] | None,
    guidance_scale: float,
    timesteps: torch.Tensor | None = None,
) -> DenoisingState:
    """A state at the first of `timesteps` (by default all of `scheduler`'s, set already);
    `generators` is, per latent row, the generator that schedulers adding noise each step draw from."""
    timesteps = scheduler.timesteps if timesteps is None else timesteps
    return DenoisingState(
        scheduler=scheduler,
        latents=latents,
        timesteps=timesteps,
        timesteps_on_host=timesteps.cpu(),
        encoder_hidden_states=encoder_hidden_states,
        added_cond_kwargs=added_cond_kwargs,
        guidance_scale=guidance_scale,
        step_kwargs=_step_kwargs(scheduler, generators),
    )


@torch.inference_mode()
def denoise_step(unet: Any, states: Sequence[DenoisingState]) -> None:
    """Advance each of `states` by one step of its own scheduler, with one UNet call for all.

    `unet` is called as `unet(sample, timestep, encoder_hidden_states=..., added_cond_kwargs=...,
    return_dict=False)` with one float32 timestep per row: the diffusers UNet, or the engine's
    runner that stands in for it.
    """
    # 1. Each state's model input, scaled by its own scheduler, with its timestep per row
    inputs: list[torch.Tensor] = []
    timesteps: list[torch.Tensor] = []
    for state in states:
        model_input = torch.cat([state.latents] * 2) if state.guided else state.latents
        model_input = state.scheduler.scale_model_input(model_input, state.timesteps_on_host[state.step_index])
        if state.extra_channels is not None:
            extra = torch.cat([state.extra_channels] * 2) if state.guided else state.extra_channels
            model_input = torch.cat([model_input, extra], dim=1)
        inputs.append(model_input)
        # float32 for all: schedulers disagree on the timestep dtype (int64, float32), and the
        # UNet's sinusoidal embedding converts it to float32 anyway.
        timesteps.append(state.timesteps[state.step_index].to(torch.float32).expand(model_input.shape[0]))

    # 2. One UNet call over every row of every state
    added_cond_kwargs = None
    if all(state.added_cond_kwargs is not None for state in states):
        added_cond_kwargs = {
            key: torch.cat([state.added_cond_kwargs[key] for state in states if state.added_cond_kwargs])
            for key in ("text_embeds", "time_ids")
        }
    noise_pred = unet(
        torch.cat(inputs),
        torch.cat(timesteps),
        encoder_hidden_states=torch.cat([state.encoder_hidden_states for state in states]),
        added_cond_kwargs=added_cond_kwargs,
        return_dict=False,
    )[0]

    # 3. Per state: its rows, its guidance, its scheduler's step
    for state, prediction in zip(states, noise_pred.split([rows.shape[0] for rows in inputs]), strict=True):
        if state.guided:
            # Classifier-free guidance (Ho & Salimans 2022): push away from the unconditional prediction.
            negative, positive = prediction.chunk(2)
            prediction = negative + state.guidance_scale * (positive - negative)
        state.latents = state.scheduler.step(
            prediction, state.timesteps_on_host[state.step_index], state.latents, **state.step_kwargs,
            return_dict=False,
        )[0]
        state.step_index += 1
        if state.after_step is not None:
            state.after_step(state)


def _step_kwargs(scheduler: SchedulerMixin, generators: list[torch.Generator]) -> dict[str, Any]:
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, Any] = {}
    if "eta" in accepted:
        # DDIM's eta = 0: deterministic DDIM, as the diffusers pipelines default.
        kwargs["eta"] = 0.0
    if "generator" in accepted:
        # A request draws from its generator as a whole, like diffusers for a call with that
        # request alone. Seeded CPU noise is what makes the images match diffusers'; its copy to
        # the device is the one host sync per step that stochastic schedulers (euler_a, ddpm) keep.
        distinct = {id(generator) for generator in generators}
        kwargs["generator"] = generators[0] if len(distinct) == 1 else generators
    return kwargs
