"""Text-to-image with a refiner: SDXL's "ensemble of expert denoisers" (Podell et al. 2023, section
2.5; diffusers' `denoising_end` / `denoising_start`).

The base model runs the high-noise part of the schedule, the timesteps at or above the one that
`high_noise_fraction` of the training schedule reaches; its latents are then handed, as they are,
to the refiner, which runs the rest of the same schedule under its own conditioning (its text
encoder, its aesthetic-score time ids) and decodes them with its VAE. This is what
`StableDiffusionXLPipeline(denoising_end=f, output_type="latent")` followed by
`StableDiffusionXLImg2ImgPipeline(denoising_start=f)` does, with the same generator.

Both phases are one `DenoisingState` in the shared denoise step: at the handover the state takes
the refiner's scheduler, timesteps, conditioning and UNet (`state.unet`), so a request moves from
the base's UNet calls to the refiner's between two steps, and requests in either phase keep
sharing UNet calls with the others in the same phase.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import numpy as np
import torch

from sdserve_backend.pipelines import schedulers
from sdserve_backend.pipelines.denoise import DenoisingState, start_denoising
from sdserve_backend.pipelines.requests import GenerationRequest, GenerationSettings
from sdserve_backend.pipelines.tasks.image_to_image import ImageToImage, denoising_cutoff
from sdserve_backend.pipelines.tasks.text_to_image import TextToImage
from sdserve_backend.pipelines.vae import decode_latents
from sdserve_backend.quoting import quoted

# diffusers' example split for SDXL base + refiner: the base runs the first 80 % of the schedule.
DEFAULT_HIGH_NOISE_FRACTION = 0.8


class RefinedTextToImage(TextToImage):
    """Text-to-image on a base model, finished by `refiner` (an image-to-image task over the
    refiner's components and its own prompt encoder)."""

    name = "text_to_image"

    def __init__(self, base: TextToImage, refiner: ImageToImage) -> None:
        super().__init__(base.components, base.prompt_encoder)
        self.refiner = refiner

    def check(self, request: GenerationRequest, settings: GenerationSettings) -> None:
        super().check(request, settings)
        fraction = request.high_noise_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise ValueError(f"high_noise_fraction must be a number in (0, 1) for the refiner to run, got {quoted(fraction)}")
        base_steps, refiner_steps = self.phase_steps(settings, fraction)
        if base_steps == 0 or refiner_steps == 0:
            raise ValueError(
                f"high_noise_fraction {fraction} of {settings.steps} steps leaves the "
                f"{'base' if base_steps == 0 else 'refiner'} no step to run; move it toward the middle or give more steps"
            )

    def phase_steps(self, settings: GenerationSettings, fraction: float) -> tuple[int, int]:
        """The UNet evaluations of the base's phase and of the refiner's. Counted on schedules on
        the host: checking a request never waits on the device."""
        counted = []
        for components in (self.components, self.refiner.components):
            scheduler = schedulers.make_scheduler(settings.scheduler, components.scheduler_class,
                                                  components.scheduler_config)
            scheduler.set_timesteps(settings.steps)
            counted.append(scheduler)
        return (len(end_timesteps(counted[0], fraction)),
                len(ImageToImage.start_timesteps(counted[1], settings.steps, 1.0, fraction)))

    def batch_key(self, request: GenerationRequest, settings: GenerationSettings) -> Hashable:
        # Plain text-to-image requests share the base's UNet calls; in the refiner's, rows need
        # conditioning of one length, which a key of the same chunk count gives.
        key = super().batch_key(request, settings)
        refiner_chunks = self.refiner.prompt_chunks(request, settings)
        return key if refiner_chunks == self.prompt_chunks(request, settings) else (key, "refiner", refiner_chunks)

    @torch.inference_mode()
    def prepare(self, request: GenerationRequest, settings: GenerationSettings) -> DenoisingState:
        """The base's state up to the handover, which then continues as the refiner's."""
        assert request.high_noise_fraction is not None
        fraction = float(request.high_noise_fraction)
        # 1. Encode the prompts for the base
        conditioning = self.conditioning(request, settings)
        # 2. The base's scheduler, its timesteps cut where the refiner takes over
        scheduler = self.make_scheduler(settings, request.seed)
        timesteps = end_timesteps(scheduler, fraction)
        # 3. Initial latents from the request's seed; the same generator draws both phases' step noise
        latents, generator = self.prepare_latents(request, settings, scheduler)
        generators = [self.step_noise_generator(request, generator)] * len(request.prompts)
        state = start_denoising(scheduler, latents, generators, *conditioning, guidance_scale=settings.guidance_scale,
                                timesteps=timesteps, guidance_interval=(settings.guidance_start, settings.guidance_end),
                                cache_interval=settings.cache_interval)
        # 4. The refiner's part, prepared now so that the handover costs nothing but the swap
        later = self.refiner.continuation(request, settings, fraction, generators)
        state.evaluations_total = len(timesteps) + len(later.timesteps)
        state.after_step = _hand_over(later)
        return state

    def finish(self, latents: torch.Tensor) -> np.ndarray:
        """Latents -> uint8 images [B, H, W, 3], decoded by the refiner's VAE (as diffusers' refiner
        pipeline decodes them)."""
        return decode_latents(self.refiner.components.vae, latents)


def end_timesteps(scheduler, fraction: float) -> torch.Tensor:  # noqa: ANN001 - a diffusers scheduler
    """The base's timesteps with `denoising_end` = `fraction`: those at or above the cutoff."""
    cutoff = denoising_cutoff(scheduler, fraction)
    return scheduler.timesteps[: int((scheduler.timesteps >= cutoff).sum())]


def _hand_over(later: DenoisingState) -> Callable[[DenoisingState], None]:
    """After the base's last step: the state continues with the refiner's scheduler, timesteps,
    conditioning and UNet, from the base's latents."""

    def hand_over(state: DenoisingState) -> None:
        if not state.done:
            return
        state.evaluations_before = state.step_index
        state.scheduler = later.scheduler
        state.timesteps, state.timesteps_on_host = later.timesteps, later.timesteps_on_host
        state.encoder_hidden_states, state.added_cond_kwargs = later.encoder_hidden_states, later.added_cond_kwargs
        state.step_kwargs = later.step_kwargs
        state.unet = later.unet
        state.step_index = 0
        # Kept features are the base UNet's; LoRAs are the base's.
        state.features = None
        state.loras = ()
        state.after_step = None

    return hand_over
