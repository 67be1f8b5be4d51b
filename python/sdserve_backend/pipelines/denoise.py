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

Two fast modes, each off unless a request asks for it, trade a measured deviation for speed:
- a guidance interval (Kynkäänniemi et al. 2024): classifier-free guidance only on the steps in
  [guidance_start, guidance_end) as fractions of the schedule; the other steps run the positive
  rows alone (one row per image instead of two). The whole range [0, 1) is exact guidance.
- feature caching (`feature_cache`, DeepCache): every `cache_interval`-th step runs the whole UNet
  and keeps its deep features; the steps between reuse them and run only the outer blocks.
  Interval 1 is the plain UNet call. A state whose rows change (entering or leaving its guidance
  interval) runs its next step in full, since the kept features are per row.
States that run in full and states that reuse their features take one UNet call each.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import SchedulerMixin
from diffusers.models.embeddings import get_timestep_embedding

from sdserve_backend.pipelines import feature_cache


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
    # Fast modes (module docstring): guidance only within [start, end) of the schedule; the whole
    # UNet every `cache_interval`-th step, the outer blocks on kept features in between.
    guidance_interval: tuple[float, float] = (0.0, 1.0)
    cache_interval: int = 1
    # The deep features of the last full step (one row per UNet row), and whether they were guided.
    features: torch.Tensor | None = None
    features_guided: bool = False
    # The UNet that runs this state's steps; None: the model's own. A base model's request handed
    # to its refiner part-way (`tasks/refined.py`) continues on the refiner's.
    unet: Any = None
    # A request run in phases (the base, then the refiner): the UNet evaluations of the phases
    # before this one, and of all phases (None: this phase's alone), for its progress.
    evaluations_before: int = 0
    evaluations_total: int | None = None
    # A guidance-distilled UNet (LCM): the guidance scale embedded per row (`embed_guidance`),
    # passed as its timestep condition; such a request runs no classifier-free guidance.
    guidance_embedding: torch.Tensor | None = None

    @property
    def done(self) -> bool:
        return self.step_index >= len(self.timesteps)

    @property
    def guided(self) -> bool:
        """Whether the request uses classifier-free guidance (its conditioning has negative rows)."""
        return self.guidance_scale > 1.0 and self.guidance_embedding is None

    @property
    def rows(self) -> int:
        """The rows this state has in this step's UNet call (its latents twice while guided)."""
        return int(self.latents.shape[0]) * (2 if self.guided_now else 1)

    @property
    def guided_now(self) -> bool:
        """Whether this step applies guidance: the request's, within its guidance interval."""
        if not self.guided:
            return False
        start, end = self.guidance_interval
        position = self.step_index / len(self.timesteps)
        return start <= position < end

    @property
    def reuses_features_now(self) -> bool:
        """Whether this step reuses the features of an earlier full step."""
        return (
            self.cache_interval > 1
            and self.step_index % self.cache_interval != 0
            and self.features is not None
            and self.features_guided == self.guided_now
        )

    def conditioning_now(self) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """This step's text conditioning (and SDXL's added conditioning): the positive rows only
        when the request is guided but this step is outside its guidance interval."""
        if not self.guided or self.guided_now:
            return self.encoder_hidden_states, self.added_cond_kwargs
        rows = self.latents.shape[0]
        added = None if self.added_cond_kwargs is None else {
            key: value[rows:] for key, value in self.added_cond_kwargs.items()
        }
        return self.encoder_hidden_states[rows:], added

    def completed_steps(self, steps: int) -> int:
        """How many of the caller's `steps` are done. Some schedulers take more than one UNet
        evaluation per step (Heun: two; PNDM: one extra at the start)."""
        total = self.evaluations_total if self.evaluations_total is not None else len(self.timesteps)
        return (self.evaluations_before + self.step_index) * steps // max(1, total)


def start_denoising(
    scheduler: SchedulerMixin,
    latents: torch.Tensor,
    generators: list[torch.Generator],
    encoder_hidden_states: torch.Tensor,
    added_cond_kwargs: dict[str, torch.Tensor] | None,
    guidance_scale: float,
    timesteps: torch.Tensor | None = None,
    guidance_interval: tuple[float, float] = (0.0, 1.0),
    cache_interval: int = 1,
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
        guidance_interval=guidance_interval,
        cache_interval=cache_interval,
    )


def embed_guidance(state: DenoisingState, embedding_dim: int) -> None:
    """Give `state` the timestep condition of a guidance-distilled UNet: its guidance scale w as
    diffusers' pipelines embed it for LCM UNets (w - 1, scaled by 1000, sinusoidal with the sines
    first), one row per latent. The state then runs no classifier-free guidance."""
    w = torch.full((state.latents.shape[0],), state.guidance_scale - 1.0) * 1000.0
    embedding = get_timestep_embedding(w, embedding_dim, flip_sin_to_cos=False, downscale_freq_shift=1)
    state.guidance_embedding = embedding.to(device=state.latents.device, dtype=state.latents.dtype)


@torch.inference_mode()
def denoise_step(unet: Any, states: Sequence[DenoisingState]) -> None:
    """Advance each of `states` by one step of its own scheduler, with one UNet call for all
    (two when some reuse their cached features and others run in full).

    `unet` is called as `unet(sample, timestep, encoder_hidden_states=..., added_cond_kwargs=...,
    return_dict=False)` with one float32 timestep per row: the diffusers UNet, or the engine's
    runner that stands in for it. Feature caching calls `forward_keeping_features` and
    `forward_from_features` on it when it has them (the engine's runner), else
    `feature_cache`'s functions on the model.
    """
    # 1. Each state's model input, scaled by its own scheduler, with its timestep per row
    guided = [state.guided_now for state in states]
    inputs: list[torch.Tensor] = []
    timesteps: list[torch.Tensor] = []
    for state, both in zip(states, guided, strict=True):
        model_input = torch.cat([state.latents] * 2) if both else state.latents
        model_input = state.scheduler.scale_model_input(model_input, state.timesteps_on_host[state.step_index])
        if state.extra_channels is not None:
            extra = torch.cat([state.extra_channels] * 2) if both else state.extra_channels
            model_input = torch.cat([model_input, extra], dim=1)
        inputs.append(model_input)
        # float32 for all: schedulers disagree on the timestep dtype (int64, float32), and the
        # UNet's sinusoidal embedding converts it to float32 anyway.
        timesteps.append(state.timesteps[state.step_index].to(torch.float32).expand(model_input.shape[0]))

    # 2. The UNet over every row: one call for the states running in full, one for those reusing
    #    their features
    # Per-request LoRAs apply to the rows of one call over every state in order: with any, every
    # state runs in full this step (and keeps no features).
    # Guidance-distilled UNets (LCM) take a timestep condition the cached forward does not pass.
    caching = (any(state.cache_interval > 1 for state in states) and not any(state.loras for state in states)
               and not any(state.guidance_embedding is not None for state in states)
               and feature_cache.supports(_model_of(unet)))
    if not caching:
        for state in states:
            state.features = None
    reusing = [caching and state.reuses_features_now for state in states]
    predictions: list[torch.Tensor | None] = [None] * len(states)
    for reuse in (False, True):
        members = [index for index, flag in enumerate(reusing) if flag == reuse]
        if not members:
            continue
        conditioning = [states[index].conditioning_now() for index in members]
        sample = torch.cat([inputs[index] for index in members])
        timestep = torch.cat([timesteps[index] for index in members])
        encoder_hidden_states = torch.cat([text for text, _ in conditioning])
        added_cond_kwargs = None
        if all(added is not None for _, added in conditioning):
            added_cond_kwargs = {
                key: torch.cat([added[key] for _, added in conditioning if added is not None])
                for key in ("text_embeds", "time_ids")
            }
        keep = caching and any(states[index].cache_interval > 1 for index in members)
        features = None
        if reuse:
            kept = torch.cat([states[index].features for index in members if states[index].features is not None])
            noise_pred = _forward_from_features(unet, sample, timestep, encoder_hidden_states, kept, added_cond_kwargs)
        elif keep:
            noise_pred, features = _forward_keeping_features(unet, sample, timestep, encoder_hidden_states,
                                                             added_cond_kwargs)
        else:
            # One model serves all the states: either every row has a guidance embedding or none.
            embedded = [states[index].guidance_embedding for index in members]
            extra = {} if embedded[0] is None else {"timestep_cond": torch.cat(embedded)}  # type: ignore[arg-type]
            noise_pred = unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                              added_cond_kwargs=added_cond_kwargs, return_dict=False, **extra)[0]
        rows = [inputs[index].shape[0] for index in members]
        for index, prediction in zip(members, noise_pred.split(rows), strict=True):
            predictions[index] = prediction
        if features is not None:
            for index, kept_rows in zip(members, features.split(rows), strict=True):
                if states[index].cache_interval > 1:
                    states[index].features = kept_rows
                    states[index].features_guided = guided[index]

    # 3. Per state: its rows, its guidance, its scheduler's step
    for state, prediction, both in zip(states, predictions, guided, strict=True):
        assert prediction is not None
        if both:
            # Classifier-free guidance (Ho & Salimans 2022): push away from the unconditional prediction.
            negative, positive = prediction.chunk(2)
            prediction = negative + state.guidance_scale * (positive - negative)
        state.latents = state.scheduler.step(
            prediction, state.timesteps_on_host[state.step_index], state.latents, **state.step_kwargs,
            return_dict=False,
        )[0]
        state.step_index += 1
        if state.done:
            state.features = None
        if state.after_step is not None:
            state.after_step(state)


def _model_of(unet: Any) -> Any:
    # The engine's runner hands attribute reads to the model; `model` is the diffusers UNet itself.
    return getattr(unet, "model", unet)


def _forward_keeping_features(unet: Any, sample: torch.Tensor, timestep: torch.Tensor,
                              encoder_hidden_states: torch.Tensor,
                              added_cond_kwargs: dict[str, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
    own = getattr(type(unet), "forward_keeping_features", None)
    if own is not None:
        return own(unet, sample, timestep, encoder_hidden_states, added_cond_kwargs)
    return feature_cache.forward_keeping_features(unet, sample, timestep, encoder_hidden_states, added_cond_kwargs)


def _forward_from_features(unet: Any, sample: torch.Tensor, timestep: torch.Tensor,
                           encoder_hidden_states: torch.Tensor, features: torch.Tensor,
                           added_cond_kwargs: dict[str, torch.Tensor] | None) -> torch.Tensor:
    own = getattr(type(unet), "forward_from_features", None)
    if own is not None:
        return own(unet, sample, timestep, encoder_hidden_states, features, added_cond_kwargs)
    return feature_cache.forward_from_features(unet, sample, timestep, encoder_hidden_states, features,
                                               added_cond_kwargs)


def _step_kwargs(scheduler: SchedulerMixin, generators: list[torch.Generator]) -> dict[str, Any]:
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, Any] = {}
    if "eta" in accepted:
        # DDIM's eta = 0: deterministic DDIM, as the diffusers pipelines default.
        kwargs["eta"] = 0.0
    if "generator" in accepted:
        # A request draws from its generator as a whole, like diffusers for a call with that
        # request alone. On a GPU it is a generator there (the task's `step_noise_generator`), so
        # the noise of euler_a and ddpm costs no host-to-device copy per step.
        distinct = {id(generator) for generator in generators}
        kwargs["generator"] = generators[0] if len(distinct) == 1 else generators
    return kwargs
