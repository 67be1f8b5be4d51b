"""Text-to-image for Stable Diffusion 1.x / 2.x and XL, as reusable stages.

One pipeline batch serves several requests that share the image size, step count, guidance scale
and scheduler. Each request keeps its own seed: its initial latents (and any noise an ancestral
scheduler adds) come from its own `torch.Generator`, drawn exactly as diffusers draws them for a
call with that request alone. So an image does not depend on what it was batched with.

The stages (`encode_prompts`, `prepare_latents`, `start_denoising`, `denoise_step`, `decode`)
are public so that a scheduler of work can interleave batches step by step; `__call__` strings
them together in order. `denoise_batch` steps several independent runs (each with its own
scheduler, step count and guidance) with one UNet call; the step batcher
(`pipelines/step_batcher.py`) drives it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from sdserve_backend.pipelines import schedulers
from sdserve_backend.pipelines.components import DiffusionComponents
from sdserve_backend.pipelines.prompt_cache import PromptCache

MAX_SEED = 2**64 - 1
# SDXL micro-conditioning: no crop (Podell et al. 2023, "SDXL", section 2.2).
CROP_TOP_LEFT = (0, 0)
# Prompts whose text embeddings are kept (SDXL: ~0.3 MB each in float16).
DEFAULT_PROMPT_CACHE_SIZE = 256
# Text kept per token of the tokenizer's length before tokenizing: CLIP's longest tokens are far
# shorter, so the cut never changes the tokens the model sees, only the work spent on the rest.
MAX_CHARS_PER_TOKEN = 32


@dataclass(frozen=True)
class GenerationRequest:
    """One client request: its prompts (one image each) and the seed for all of them."""

    prompts: list[str]
    seed: int
    # One per prompt; None means "no negative prompt" (for SDXL: zero embeddings).
    negative_prompts: list[str | None] | None = None

    def negatives(self) -> list[str | None]:
        return self.negative_prompts if self.negative_prompts is not None else [None] * len(self.prompts)


@dataclass(frozen=True)
class GenerationSettings:
    """What every request of one pipeline batch shares."""

    height: int
    width: int
    steps: int
    guidance_scale: float
    # "" is the model's own scheduler; else a short name ("euler") or a diffusers class name.
    scheduler: str = ""

    @property
    def uses_classifier_free_guidance(self) -> bool:
        return self.guidance_scale > 1.0


@dataclass
class PromptEmbeddings:
    """Text conditioning for a batch; the negative halves are None without guidance."""

    positive: torch.Tensor
    negative: torch.Tensor | None
    # SDXL only: the second encoder's projected pooled output.
    pooled_positive: torch.Tensor | None = None
    pooled_negative: torch.Tensor | None = None


@dataclass
class InitialNoise:
    latents: torch.Tensor
    # Per image, the generator its request draws from; schedulers that add noise per step use it.
    generators: list[torch.Generator]


@dataclass
class DenoisingState:
    """A batch part-way through the denoising loop."""

    scheduler: SchedulerMixin
    latents: torch.Tensor
    timesteps: torch.Tensor
    # The same timesteps on the CPU: schedulers index their CPU tables with them, and a device
    # timestep there would force a host sync every step.
    timesteps_on_host: torch.Tensor
    encoder_hidden_states: torch.Tensor
    added_cond_kwargs: dict[str, torch.Tensor] | None
    guidance_scale: float
    step_kwargs: dict[str, Any] = field(default_factory=dict)
    step_index: int = 0

    @property
    def done(self) -> bool:
        return self.step_index >= len(self.timesteps)


class TextToImagePipeline:
    """Stable Diffusion text-to-image over loaded `DiffusionComponents`."""

    def __init__(self, components: DiffusionComponents, prompt_cache_size: int = DEFAULT_PROMPT_CACHE_SIZE) -> None:
        self.components = components
        self.prompt_cache = PromptCache(prompt_cache_size)
        if components.is_sdxl:
            self._check_sdxl_time_embedding()

    # -----------------------------------------------------------------------------------------
    # The whole run

    @torch.inference_mode()
    def __call__(
        self,
        requests: Sequence[GenerationRequest],
        settings: GenerationSettings,
        on_step: Callable[[int, int], None] | None = None,
    ) -> list[np.ndarray]:
        """Generate images for `requests` as one batch: per request, uint8 [len(prompts), H, W, 3].

        `on_step(step, steps)` is called as each of the `settings.steps` steps completes (1-based).
        """
        # 1. Check inputs
        self.check_inputs(requests, settings)

        # 2. Encode the prompts of all requests in request order
        prompts = [prompt for request in requests for prompt in request.prompts]
        negative_prompts = [negative for request in requests for negative in request.negatives()]
        embeddings = self.encode_prompts(prompts, negative_prompts, settings.uses_classifier_free_guidance)

        # 3. Prepare the scheduler and its timesteps
        scheduler = self.make_scheduler(settings)

        # 4. Draw each request's initial latents from its own seed
        noise = self.prepare_latents(requests, settings, scheduler)

        # 5. Denoise
        state = self.start_denoising(embeddings, noise, settings, scheduler)
        reported = 0
        while not state.done:
            self.denoise_step(state)
            # Some schedulers take more than one UNet evaluation per step (Heun: two; PNDM: one
            # extra at the start), so progress is told in the caller's steps.
            step = state.step_index * settings.steps // len(state.timesteps)
            if on_step is not None and step > reported:
                reported = step
                on_step(step, settings.steps)

        # 6. Decode and hand each request its images
        images = self.decode(state.latents)
        return split_per_request(images, requests)

    def check_inputs(self, requests: Sequence[GenerationRequest], settings: GenerationSettings) -> None:
        """Raise ValueError naming the argument and its value for anything this model cannot run."""
        if len(requests) == 0:
            raise ValueError("requests must hold at least one request, got none")
        factor = self.components.vae_scale_factor
        for name, value in (("height", settings.height), ("width", settings.width)):
            if not isinstance(value, int) or value <= 0 or value % factor != 0:
                raise ValueError(f"{name} must be a positive multiple of {factor}, got {value!r}")
        max_steps = int(self.components.scheduler_config.get("num_train_timesteps", 1000))
        if not isinstance(settings.steps, int) or not 1 <= settings.steps <= max_steps:
            raise ValueError(f"steps must be an integer from 1 to {max_steps}, got {settings.steps!r}")
        if not math.isfinite(settings.guidance_scale) or settings.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {settings.guidance_scale!r}")
        schedulers.resolve_scheduler_class(settings.scheduler, self.components.scheduler_class)
        for request in requests:
            if len(request.prompts) == 0:
                raise ValueError("prompt must hold at least one prompt, got none")
            if not all(isinstance(prompt, str) for prompt in request.prompts):
                raise ValueError(f"prompt must be text, got {request.prompts!r}")
            if request.negative_prompts is not None and len(request.negative_prompts) != len(request.prompts):
                raise ValueError(
                    f"negative_prompt must hold one entry per prompt ({len(request.prompts)}), "
                    f"got {len(request.negative_prompts)}"
                )
            if not isinstance(request.seed, int) or not 0 <= request.seed <= MAX_SEED:
                raise ValueError(f"seed must be an integer from 0 to {MAX_SEED}, got {request.seed!r}")

    # -----------------------------------------------------------------------------------------
    # Stages

    @torch.inference_mode()
    def encode_prompts(
        self, prompts: list[str], negative_prompts: list[str | None], classifier_free_guidance: bool
    ) -> PromptEmbeddings:
        """Text embeddings for `prompts`, plus those of the negatives when guidance is on."""
        if self.components.is_sdxl:
            return self._encode_prompts_sdxl(prompts, negative_prompts, classifier_free_guidance)
        positive = self._encode_with_clip(prompts)
        # Stable Diffusion 1.x / 2.x: no negative prompt means the empty prompt.
        negative = self._encode_with_clip([text or "" for text in negative_prompts]) if classifier_free_guidance else None
        return PromptEmbeddings(positive=positive, negative=negative)

    def make_scheduler(self, settings: GenerationSettings) -> SchedulerMixin:
        """A fresh scheduler for one batch, its timesteps set for `settings.steps`."""
        scheduler = schedulers.make_scheduler(
            settings.scheduler, self.components.scheduler_class, self.components.scheduler_config
        )
        scheduler.set_timesteps(settings.steps, device=self.components.device)
        # Text-to-image always starts at the first timestep; telling the scheduler so spares it
        # looking the timestep up (a device-to-host sync) on the first step.
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)
        return scheduler

    def prepare_latents(
        self, requests: Sequence[GenerationRequest], settings: GenerationSettings, scheduler: SchedulerMixin
    ) -> InitialNoise:
        """Initial latents, each request's drawn from `Generator("cpu").manual_seed(seed)` as one
        [len(prompts), C, H/8, W/8] tensor, as diffusers draws a batch from one generator."""
        factor = self.components.vae_scale_factor
        channels = int(self.components.unet.config.in_channels)
        latents: list[torch.Tensor] = []
        generators: list[torch.Generator] = []
        for request in requests:
            generator = torch.Generator(device="cpu").manual_seed(request.seed)
            shape = (len(request.prompts), channels, settings.height // factor, settings.width // factor)
            latents.append(
                randn_tensor(shape, generator=generator, device=self.components.device, dtype=self.components.dtype)
            )
            generators += [generator] * len(request.prompts)
        return InitialNoise(latents=torch.cat(latents) * scheduler.init_noise_sigma, generators=generators)

    def start_denoising(
        self,
        embeddings: PromptEmbeddings,
        noise: InitialNoise,
        settings: GenerationSettings,
        scheduler: SchedulerMixin,
    ) -> DenoisingState:
        """Bundle the UNet conditioning (negative half first under guidance) with the latents."""
        guided = settings.uses_classifier_free_guidance
        encoder_hidden_states = _with_negative_first(embeddings.positive, embeddings.negative, guided)
        added_cond_kwargs = None
        if self.components.is_sdxl:
            assert embeddings.pooled_positive is not None
            batch_size = embeddings.positive.shape[0] * (2 if guided else 1)
            time_ids = self._sdxl_time_ids(settings).repeat(batch_size, 1)
            added_cond_kwargs = {
                "text_embeds": _with_negative_first(embeddings.pooled_positive, embeddings.pooled_negative, guided),
                "time_ids": time_ids,
            }
        return DenoisingState(
            scheduler=scheduler,
            latents=noise.latents,
            timesteps=scheduler.timesteps,
            timesteps_on_host=scheduler.timesteps.cpu(),
            encoder_hidden_states=encoder_hidden_states,
            added_cond_kwargs=added_cond_kwargs,
            guidance_scale=settings.guidance_scale,
            step_kwargs=_step_kwargs(scheduler, noise.generators),
        )

    @torch.inference_mode()
    def denoise_step(self, state: DenoisingState) -> None:
        """Advance `state` by one scheduler step; stays on the device (no host syncs)."""
        guided = state.guidance_scale > 1.0
        timestep = state.timesteps[state.step_index]
        timestep_on_host = state.timesteps_on_host[state.step_index]

        model_input = torch.cat([state.latents] * 2) if guided else state.latents
        model_input = state.scheduler.scale_model_input(model_input, timestep_on_host)
        noise_pred = self.components.unet(
            model_input,
            timestep,
            encoder_hidden_states=state.encoder_hidden_states,
            added_cond_kwargs=state.added_cond_kwargs,
            return_dict=False,
        )[0]
        if guided:
            # Classifier-free guidance (Ho & Salimans 2022): push away from the unconditional prediction.
            noise_pred_negative, noise_pred_positive = noise_pred.chunk(2)
            noise_pred = noise_pred_negative + state.guidance_scale * (noise_pred_positive - noise_pred_negative)
        state.latents = state.scheduler.step(
            noise_pred, timestep_on_host, state.latents, **state.step_kwargs, return_dict=False
        )[0]
        state.step_index += 1

    @torch.inference_mode()
    def denoise_batch(self, states: Sequence[DenoisingState]) -> None:
        """Advance each of `states` by one step of its own scheduler, with one UNet call for all.

        Each state brings its rows (its latents, twice under guidance with the unconditional
        rows first, as `denoise_step` lays them out), its own timestep for each row (the UNet
        takes one timestep per sample) and its own conditioning. Guidance and the scheduler step
        then run per state on its share of the prediction, so each state advances exactly as it
        would alone. Stays on the device (no host syncs).
        """
        # 1. Each state's model input, scaled by its own scheduler, with its timestep per row
        inputs: list[torch.Tensor] = []
        timesteps: list[torch.Tensor] = []
        for state in states:
            guided = state.guidance_scale > 1.0
            model_input = torch.cat([state.latents] * 2) if guided else state.latents
            inputs.append(state.scheduler.scale_model_input(model_input, state.timesteps_on_host[state.step_index]))
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
        noise_pred = self.components.unet(
            torch.cat(inputs),
            torch.cat(timesteps),
            encoder_hidden_states=torch.cat([state.encoder_hidden_states for state in states]),
            added_cond_kwargs=added_cond_kwargs,
            return_dict=False,
        )[0]

        # 3. Per state: its rows, its guidance, its scheduler's step
        for state, prediction in zip(states, noise_pred.split([rows.shape[0] for rows in inputs]), strict=True):
            if state.guidance_scale > 1.0:
                # Classifier-free guidance (Ho & Salimans 2022), as in `denoise_step`.
                negative, positive = prediction.chunk(2)
                prediction = negative + state.guidance_scale * (positive - negative)
            state.latents = state.scheduler.step(
                prediction, state.timesteps_on_host[state.step_index], state.latents, **state.step_kwargs,
                return_dict=False,
            )[0]
            state.step_index += 1

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents -> uint8 images [B, H, W, 3] on the host."""
        vae = self.components.vae
        latents_mean = getattr(vae.config, "latents_mean", None)
        latents_std = getattr(vae.config, "latents_std", None)
        if latents_mean is not None and latents_std is not None:
            mean = torch.tensor(latents_mean, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1)
            std = torch.tensor(latents_std, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1)
            latents = latents * std / vae.config.scaling_factor + mean
        else:
            latents = latents / vae.config.scaling_factor
        image = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        image = (image * 0.5 + 0.5).clamp(0, 1).float()
        image = (image * 255).round().to(torch.uint8)
        return image.permute(0, 2, 3, 1).cpu().numpy()

    # -----------------------------------------------------------------------------------------
    # Text encoders

    def _encode_with_clip(self, texts: list[str]) -> torch.Tensor:
        """Stable Diffusion 1.x / 2.x: the text encoder's last hidden state."""
        return self.prompt_cache.encode(texts, lambda batch: (self._run_clip(batch),))[0]

    def _run_clip(self, texts: list[str]) -> torch.Tensor:
        tokenizer, encoder = self.components.tokenizer, self.components.text_encoder
        tokens = _tokenize(tokenizer, texts)
        attention_mask = None
        if getattr(encoder.config, "use_attention_mask", False):
            attention_mask = tokens.attention_mask.to(self.components.device)
        hidden_states = encoder(tokens.input_ids.to(self.components.device), attention_mask=attention_mask)[0]
        return hidden_states.to(dtype=encoder.dtype)

    def _encode_prompts_sdxl(
        self, prompts: list[str], negative_prompts: list[str | None], classifier_free_guidance: bool
    ) -> PromptEmbeddings:
        positive, pooled_positive = self._encode_with_both_clips(prompts)
        if not classifier_free_guidance:
            return PromptEmbeddings(positive=positive, negative=None, pooled_positive=pooled_positive)

        zeroed = [text is None and self.components.force_zeros_for_empty_prompt for text in negative_prompts]
        if all(zeroed):
            negative, pooled_negative = torch.zeros_like(positive), torch.zeros_like(pooled_positive)
        else:
            negative, pooled_negative = self._encode_with_both_clips([text or "" for text in negative_prompts])
            if any(zeroed):
                keep = torch.tensor([not z for z in zeroed], device=positive.device, dtype=positive.dtype)
                negative = negative * keep.view(-1, 1, 1)
                pooled_negative = pooled_negative * keep.view(-1, 1)
        return PromptEmbeddings(
            positive=positive, negative=negative, pooled_positive=pooled_positive, pooled_negative=pooled_negative
        )

    def _encode_with_both_clips(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """SDXL: both encoders' penultimate hidden states side by side, and the second's pooled output."""
        hidden_states, pooled = self.prompt_cache.encode(texts, self._run_both_clips)
        return hidden_states, pooled

    def _run_both_clips(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = self.components
        assert parts.tokenizer_2 is not None and parts.text_encoder_2 is not None
        hidden_states: list[torch.Tensor] = []
        pooled = torch.empty(0)
        for tokenizer, encoder in ((parts.tokenizer, parts.text_encoder), (parts.tokenizer_2, parts.text_encoder_2)):
            token_ids = _tokenize(tokenizer, texts).input_ids.to(parts.device)
            output = encoder(token_ids, output_hidden_states=True)
            hidden_states.append(output.hidden_states[-2])
            # The pooled embedding comes from the last encoder that has a projection.
            if output[0].ndim == 2:
                pooled = output[0]
        dtype = parts.text_encoder_2.dtype
        return torch.cat(hidden_states, dim=-1).to(dtype=dtype), pooled.to(dtype=dtype)

    def _sdxl_time_ids(self, settings: GenerationSettings) -> torch.Tensor:
        # original size, crop top-left, target size: the image is generated at its native size.
        size = (settings.height, settings.width)
        time_ids = [*size, *CROP_TOP_LEFT, *size]
        return torch.tensor([time_ids], dtype=self.components.dtype, device=self.components.device)

    def _check_sdxl_time_embedding(self) -> None:
        unet, encoder_2 = self.components.unet, self.components.text_encoder_2
        assert encoder_2 is not None
        given = int(unet.config.addition_time_embed_dim) * 6 + int(encoder_2.config.projection_dim)
        expected = unet.add_embedding.linear_1.in_features
        if given != expected:
            raise ValueError(
                f"the UNet expects added conditioning of width {expected}, but its time embedding and "
                f"text_encoder_2.projection_dim give {given}; the model configs disagree"
            )


def split_per_request(images: np.ndarray, requests: Sequence[GenerationRequest]) -> list[np.ndarray]:
    """Cut a batch of images back into each request's share, in request order."""
    bounds = np.cumsum([len(request.prompts) for request in requests])[:-1]
    return list(np.split(images, bounds))


def _tokenize(tokenizer: Any, texts: list[str]) -> Any:
    # The tokenizer keeps only its first model_max_length tokens but would split the whole text
    # first: cutting the text beforehand bounds its time and memory whatever the prompt's length.
    limit = tokenizer.model_max_length * MAX_CHARS_PER_TOKEN
    texts = [text[:limit] for text in texts]
    # Padded to the tokenizer's full length (77 for CLIP), as the models were trained.
    return tokenizer(
        texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )


def _with_negative_first(positive: torch.Tensor, negative: torch.Tensor | None, guided: bool) -> torch.Tensor:
    if not guided:
        return positive
    assert negative is not None
    return torch.cat([negative, positive])


def _step_kwargs(scheduler: SchedulerMixin, generators: list[torch.Generator]) -> dict[str, Any]:
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, Any] = {}
    if "eta" in accepted:
        # DDIM's eta = 0: deterministic DDIM, as the diffusers pipelines default.
        kwargs["eta"] = 0.0
    if "generator" in accepted:
        # A batch of one request draws from its generator as a whole, like diffusers; several
        # requests draw image by image, each from its own request's generator. Seeded CPU noise
        # is what makes the images match diffusers'; its copy to the device is the one host sync
        # per step that stochastic schedulers (euler_a, ddpm) keep.
        distinct = {id(generator) for generator in generators}
        kwargs["generator"] = generators[0] if len(distinct) == 1 else generators
    return kwargs
