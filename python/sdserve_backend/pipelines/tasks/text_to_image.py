"""Text-to-image: prompts and a seed into latents drawn from that seed, denoised under the
prompts' conditioning, decoded by the VAE (Stable Diffusion 1.x / 2.x and XL).

Each request keeps its own seed: its initial latents (and any noise an ancestral scheduler adds)
come from its own `torch.Generator`, drawn exactly as diffusers draws them for a call with that
request alone (the per-step noise is drawn on the GPU there: `step_noise_generator`). So an
image does not depend on what it was batched with.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

import numpy as np
import torch
from diffusers import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from sdserve_backend.pipelines import schedulers
from sdserve_backend.pipelines.components import DiffusionComponents
from sdserve_backend.pipelines.denoise import DenoisingState, start_denoising
from sdserve_backend.pipelines.prompts import PromptEncoder
from sdserve_backend.pipelines.requests import MAX_SEED, GenerationRequest, GenerationSettings
from sdserve_backend.pipelines.vae import decode_latents
from sdserve_backend.quoting import quoted

# SDXL micro-conditioning: no crop (Podell et al. 2023, "SDXL", section 2.2).
CROP_TOP_LEFT = (0, 0)
# The refiner's aesthetic scores are LAION aesthetic predictor ratings, 0 to 10.
MAX_AESTHETIC_SCORE = 10.0


class TextToImage:
    """The text-to-image task over loaded `DiffusionComponents` and a shared prompt encoder."""

    name = "text_to_image"

    def __init__(self, components: DiffusionComponents, prompt_encoder: PromptEncoder) -> None:
        self.components = components
        self.prompt_encoder = prompt_encoder
        if components.is_sdxl:
            self._check_sdxl_time_embedding()

    def check(self, request: GenerationRequest, settings: GenerationSettings) -> None:
        """Raise ValueError naming the argument and its value for anything this model cannot run."""
        factor = self.components.vae_scale_factor
        for name, value in (("height", settings.height), ("width", settings.width)):
            if not isinstance(value, int) or value <= 0 or value % factor != 0:
                raise ValueError(f"{name} must be a positive multiple of {factor}, got {quoted(value)}")
        max_steps = schedulers.max_scheduler_steps(
            settings.scheduler, self.components.scheduler_class, self.components.scheduler_config
        )
        if not isinstance(settings.steps, int) or not 1 <= settings.steps <= max_steps:
            with_scheduler = f" with scheduler {quoted(settings.scheduler)}" if max_steps != schedulers.max_inference_steps(
                self.components.scheduler_config) else ""
            raise ValueError(f"steps must be an integer from 1 to {max_steps}{with_scheduler}, got {quoted(settings.steps)}")
        if not math.isfinite(settings.guidance_scale) or settings.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {quoted(settings.guidance_scale)}")
        start, end = settings.guidance_start, settings.guidance_end
        if not (math.isfinite(start) and math.isfinite(end) and 0.0 <= start <= end <= 1.0):
            raise ValueError(
                f"guidance_start and guidance_end must be fractions with 0 <= guidance_start <= guidance_end <= 1, "
                f"got {quoted(start)} and {quoted(end)}"
            )
        if not isinstance(settings.cache_interval, int) or not 1 <= settings.cache_interval <= max_steps:
            raise ValueError(f"cache_interval must be an integer from 1 to {max_steps}, got {quoted(settings.cache_interval)}")
        if len(request.prompts) == 0:
            raise ValueError("prompt must hold at least one prompt, got none")
        if not all(isinstance(prompt, str) for prompt in request.prompts):
            raise ValueError(f"prompt must be text, got {quoted(request.prompts)}")
        if request.negative_prompts is not None and len(request.negative_prompts) != len(request.prompts):
            raise ValueError(
                f"negative_prompt must hold one entry per prompt ({len(request.prompts)}), "
                f"got {len(request.negative_prompts)}"
            )
        if not isinstance(request.seed, int) or not 0 <= request.seed <= MAX_SEED:
            raise ValueError(f"seed must be an integer from 0 to {MAX_SEED}, got {quoted(request.seed)}")
        if self.name == "text_to_image" and self.components.is_inpainting:
            raise ValueError("this is an inpainting model (its UNet takes a mask): give an input 'image' and a 'mask'")
        if self.name == "text_to_image" and self.components.requires_aesthetics_score:
            raise ValueError("this is an SDXL refiner, which refines an image: give an input 'image' (image-to-image)")
        for name in ("aesthetic_score", "negative_aesthetic_score"):
            score = getattr(request, name)
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= MAX_AESTHETIC_SCORE:
                raise ValueError(f"{name} must be a number from 0 to {MAX_AESTHETIC_SCORE}, got {quoted(score)}")

    def batch_key(self, request: GenerationRequest, settings: GenerationSettings) -> Hashable:
        # Rows of one UNet call share the latent size and the length of the text conditioning
        # (long prompts make it longer); everything else is per request.
        return ("unet", settings.height, settings.width, self.prompt_chunks(request, settings))

    def prompt_chunks(self, request: GenerationRequest, settings: GenerationSettings) -> int:
        """How many 77-token chunks the request's text conditioning has."""
        texts = list(request.prompts)
        if self.uses_classifier_free_guidance(settings):
            texts += [text or "" for text in request.negatives()]
        return self.prompt_encoder.chunk_count(texts, request.chunk_prompts)

    @torch.inference_mode()
    def prepare(self, request: GenerationRequest, settings: GenerationSettings) -> DenoisingState:
        """The request's prompt embeddings, its own scheduler and its latents from its own seed."""
        # 1. Encode the prompts
        conditioning = self.conditioning(request, settings)
        # 2. Prepare the scheduler and its timesteps
        scheduler = self.make_scheduler(settings, request.seed)
        # 3. Draw the initial latents from the request's seed
        latents, generator = self.prepare_latents(request, settings, scheduler)
        # 4. Bundle the UNet conditioning (negative half first under guidance) with the latents
        return start_denoising(scheduler, latents, [self.step_noise_generator(request, generator)] * len(request.prompts),
                               *conditioning, guidance_scale=settings.guidance_scale,
                               guidance_interval=(settings.guidance_start, settings.guidance_end),
                               cache_interval=settings.cache_interval)

    def conditioning(
        self, request: GenerationRequest, settings: GenerationSettings
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """The UNet's text conditioning (negative half first under guidance) and, for SDXL, its
        added conditioning (pooled text embeddings and time ids)."""
        embeddings = self.prompt_encoder.encode(
            request.prompts, request.negatives(), self.uses_classifier_free_guidance(settings), request.chunk_prompts,
            loras=request.loras,
        )
        guided = self.uses_classifier_free_guidance(settings)
        added_cond_kwargs = None
        if self.components.is_sdxl:
            assert embeddings.pooled_positive is not None
            rows = embeddings.positive.shape[0]
            positive_ids, negative_ids = self._sdxl_time_ids(request, settings)
            added_cond_kwargs = {
                "text_embeds": _with_negative_first(embeddings.pooled_positive, embeddings.pooled_negative, guided),
                "time_ids": _with_negative_first(positive_ids.repeat(rows, 1), negative_ids.repeat(rows, 1), guided),
            }
        return _with_negative_first(embeddings.positive, embeddings.negative, guided), added_cond_kwargs

    def uses_classifier_free_guidance(self, settings: GenerationSettings) -> bool:
        """Guidance over 1 runs classifier-free guidance (negative rows), except on a
        guidance-distilled UNet (LCM), which takes the scale embedded instead."""
        return settings.uses_classifier_free_guidance and self.components.guidance_embedding_dim is None

    def finish(self, latents: torch.Tensor) -> np.ndarray:
        """Latents -> uint8 images [B, H, W, 3] on the host."""
        return decode_latents(self.components.vae, latents)

    # -----------------------------------------------------------------------------------------
    # Stages

    def make_scheduler(self, settings: GenerationSettings, seed: int | None = None) -> SchedulerMixin:
        """A fresh scheduler for one request, its timesteps set for `settings.steps`; `seed` is the
        request's, for the schedulers that seed their own step noise (DPM++ SDE)."""
        scheduler = schedulers.make_scheduler(
            settings.scheduler, self.components.scheduler_class, self.components.scheduler_config, seed
        )
        scheduler.set_timesteps(settings.steps, device=self.components.device)
        # Text-to-image always starts at the first timestep; telling the scheduler so spares it
        # looking the timestep up (a device-to-host sync) on the first step.
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)
        return scheduler

    def prepare_latents(
        self, request: GenerationRequest, settings: GenerationSettings, scheduler: SchedulerMixin
    ) -> tuple[torch.Tensor, torch.Generator]:
        """Initial latents drawn from `Generator("cpu").manual_seed(seed)` as one
        [len(prompts), C, H/8, W/8] tensor, as diffusers draws a batch from one generator."""
        factor = self.components.vae_scale_factor
        channels = int(self.components.vae.config.latent_channels)
        generator = torch.Generator(device="cpu").manual_seed(request.seed)
        shape = (len(request.prompts), channels, settings.height // factor, settings.width // factor)
        latents = randn_tensor(shape, generator=generator, device=self.components.device, dtype=self.components.dtype)
        return latents * scheduler.init_noise_sigma, generator

    def step_noise_generator(self, request: GenerationRequest, latents_generator: torch.Generator) -> torch.Generator:
        """Where the noise that euler_a and ddpm add each step comes from: on a GPU, a generator on
        the GPU seeded with the request's seed, so the noise is drawn there (a CPU generator's noise
        is a host-to-device copy every step); on the CPU, the latents' own generator, as diffusers
        draws it. So one seed gives one image on one kind of device, but GPU images of those two
        schedulers differ from diffusers' CPU-generator ones (the initial latents still match)."""
        device = self.components.device
        if device.type == "cpu":
            return latents_generator
        return torch.Generator(device=device).manual_seed(request.seed)

    def _sdxl_time_ids(self, request: GenerationRequest, settings: GenerationSettings) -> tuple[torch.Tensor, torch.Tensor]:
        """The positive and negative rows' time ids: original size, crop top-left, then the target
        size (the image is generated at its native size) or, for the refiner, the aesthetic score."""
        size = (settings.height, settings.width)
        if self.components.requires_aesthetics_score:
            positive = [*size, *CROP_TOP_LEFT, request.aesthetic_score]
            negative = [*size, *CROP_TOP_LEFT, request.negative_aesthetic_score]
        else:
            positive = negative = [*size, *CROP_TOP_LEFT, *size]
        parts = self.components
        return (torch.tensor([positive], dtype=parts.dtype, device=parts.device),
                torch.tensor([negative], dtype=parts.dtype, device=parts.device))

    def _check_sdxl_time_embedding(self) -> None:
        unet, encoder_2 = self.components.unet, self.components.text_encoder_2
        assert encoder_2 is not None
        time_ids = 5 if self.components.requires_aesthetics_score else 6
        given = int(unet.config.addition_time_embed_dim) * time_ids + int(encoder_2.config.projection_dim)
        expected = unet.add_embedding.linear_1.in_features
        if given != expected:
            raise ValueError(
                f"the UNet expects added conditioning of width {expected}, but its time embedding and "
                f"text_encoder_2.projection_dim give {given}; the model configs disagree"
            )


def _with_negative_first(positive: torch.Tensor, negative: torch.Tensor | None, guided: bool) -> torch.Tensor:
    if not guided:
        return positive
    assert negative is not None
    return torch.cat([negative, positive])
