"""Image-to-image: an input image, noised part-way along the schedule, denoised under the prompts
(SDEdit, Meng et al. 2021), as diffusers' `StableDiffusionImg2ImgPipeline` and
`StableDiffusionXLImg2ImgPipeline` do it.

`strength` in (0, 1] says how much of the schedule runs: the first `steps - int(steps * strength)`
steps are skipped and the image's latents are noised to the first timestep that remains. The
draws from the request's generator come in diffusers' order (the VAE's latent sample, then the
noise), so the same seed gives the same image.

The UNet call is text-to-image's: a request of this task shares UNet batches with text-to-image
requests of the same size, each at its own step of its own schedule.
"""

from __future__ import annotations

import torch
from diffusers import SchedulerMixin
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor

from sdserve_backend.pipelines.components import DiffusionComponents
from sdserve_backend.pipelines.denoise import DenoisingState, start_denoising
from sdserve_backend.pipelines.prompts import PromptEncoder
from sdserve_backend.pipelines.requests import GenerationRequest, GenerationSettings
from sdserve_backend.pipelines.tasks.text_to_image import TextToImage
from sdserve_backend.quoting import quoted

# diffusers' default strength for image-to-image; for the SDXL refiner, its SDXL pipeline's.
DEFAULT_STRENGTH = 0.8
REFINER_DEFAULT_STRENGTH = 0.3


def denoising_cutoff(scheduler: SchedulerMixin, fraction: float) -> int:
    """The training timestep `fraction` of the schedule reaches (diffusers' discrete timestep
    cutoff of denoising_end / denoising_start): a base model runs the timesteps at or above it,
    its refiner those below."""
    train_timesteps = int(scheduler.config.num_train_timesteps)
    return int(round(train_timesteps - fraction * train_timesteps))


class ImageToImage(TextToImage):
    """The image-to-image task over loaded `DiffusionComponents` and a shared prompt encoder."""

    name = "image_to_image"
    default_strength = DEFAULT_STRENGTH

    def __init__(self, components: DiffusionComponents, prompt_encoder: PromptEncoder) -> None:
        super().__init__(components, prompt_encoder)
        self.image_processor = VaeImageProcessor(vae_scale_factor=components.vae_scale_factor)

    def check(self, request: GenerationRequest, settings: GenerationSettings) -> None:
        super().check(request, settings)
        if request.images is None or len(request.images) == 0:
            raise ValueError(f"{self.name} needs an input 'image'")
        if len(request.images) not in (1, len(request.prompts)):
            raise ValueError(
                f"input 'image' must hold 1 or {len(request.prompts)} images (one per prompt), got {len(request.images)}"
            )
        if self.name == "image_to_image" and self.components.is_inpainting:
            raise ValueError("this is an inpainting model (its UNet takes a mask): give a 'mask' with the 'image'")
        strength = self.strength(request)
        if not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise ValueError(f"strength must be a number in (0, 1], got {quoted(strength)}")
        if int(settings.steps * strength) < 1:
            raise ValueError(
                f"strength {strength} of {settings.steps} steps leaves no step to run; "
                f"strength must be at least {1 / settings.steps:.4g} (or give more steps)"
            )

    def strength(self, request: GenerationRequest) -> float:
        if request.strength is not None:
            return request.strength
        return REFINER_DEFAULT_STRENGTH if self.components.requires_aesthetics_score else self.default_strength

    @torch.inference_mode()
    def prepare(self, request: GenerationRequest, settings: GenerationSettings) -> DenoisingState:
        """The request's conditioning, its own scheduler started part-way, and its image's latents
        noised to that first timestep."""
        # 1. Encode the prompts
        conditioning = self.conditioning(request, settings)
        # 2. Prepare the scheduler and the timesteps that `strength` leaves
        scheduler = self.make_scheduler(settings, request.seed)
        timesteps = self.start_timesteps(scheduler, settings.steps, self.strength(request))
        # 3. Encode the images, then noise them to the first timestep (in diffusers' draw order)
        generator = torch.Generator(device="cpu").manual_seed(request.seed)
        pixels = self.preprocess_images(request, settings)
        init_latents = self.repeat_per_prompt(self.encode_images(pixels, generator), request)
        noise = randn_tensor(init_latents.shape, generator=generator, device=self.components.device,
                             dtype=self.components.dtype)
        latents = scheduler.add_noise(init_latents, noise, timesteps[:1].repeat(init_latents.shape[0]))
        return start_denoising(scheduler, latents, [self.step_noise_generator(request, generator)] * len(request.prompts), *conditioning,
                               guidance_scale=settings.guidance_scale, timesteps=timesteps,
                               guidance_interval=(settings.guidance_start, settings.guidance_end),
                               cache_interval=settings.cache_interval)

    # -----------------------------------------------------------------------------------------
    # Stages

    @staticmethod
    def start_timesteps(scheduler: SchedulerMixin, steps: int, strength: float,
                        denoising_start: float | None = None) -> torch.Tensor:
        """The timesteps from where `strength` starts (diffusers' `get_timesteps`), the scheduler's
        begin index set to match. With `denoising_start` (a refiner continuing a base model's
        latents), those below the timestep that fraction of the training schedule reaches instead,
        a second-order scheduler never starting between its two evaluations of one step."""
        if denoising_start is None:
            skipped = steps - min(int(steps * strength), steps)
            begin = skipped * scheduler.order
        else:
            remaining = int((scheduler.timesteps < denoising_cutoff(scheduler, denoising_start)).sum())
            if scheduler.order == 2 and remaining % 2 == 0:
                remaining += 1
            begin = len(scheduler.timesteps) - remaining
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(begin)
        return scheduler.timesteps[begin:]

    @torch.inference_mode()
    def continuation(self, request: GenerationRequest, settings: GenerationSettings, denoising_start: float,
                     generators: list[torch.Generator]) -> DenoisingState:
        """The rest of a request another model denoised up to `denoising_start` of the schedule:
        this model's conditioning, scheduler and remaining timesteps, on this model's UNet; the
        latents are the other model's when it hands over (diffusers' img2img pipelines given
        latents and denoising_start: no noise is added)."""
        conditioning = self.conditioning(request, settings)
        scheduler = self.make_scheduler(settings, request.seed)
        timesteps = self.start_timesteps(scheduler, settings.steps, 1.0, denoising_start)
        state = start_denoising(scheduler, torch.empty(0), generators, *conditioning,
                                guidance_scale=settings.guidance_scale, timesteps=timesteps,
                                guidance_interval=(settings.guidance_start, settings.guidance_end),
                                cache_interval=settings.cache_interval)
        state.unet = self.components.unet
        return state

    def preprocess_images(self, request: GenerationRequest, settings: GenerationSettings) -> torch.Tensor:
        """The input images at the request's size, as float32 [-1, 1] NCHW (resized with
        diffusers' processor, Lanczos, when their size differs)."""
        assert request.images is not None
        return self.image_processor.preprocess(list(request.images), height=settings.height, width=settings.width)

    def encode_images(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Pixels -> scaled latents, sampled from the VAE's latent distribution with `generator`."""
        vae = self.components.vae
        pixels = pixels.to(device=self.components.device, dtype=vae.dtype)
        latents = vae.encode(pixels).latent_dist.sample(generator).to(self.components.dtype)
        latents_mean = getattr(vae.config, "latents_mean", None)
        latents_std = getattr(vae.config, "latents_std", None)
        if self.components.is_sdxl and latents_mean is not None and latents_std is not None:
            mean = torch.tensor(latents_mean, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1)
            std = torch.tensor(latents_std, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1)
            return (latents - mean) * vae.config.scaling_factor / std
        return vae.config.scaling_factor * latents

    @staticmethod
    def repeat_per_prompt(latents: torch.Tensor, request: GenerationRequest) -> torch.Tensor:
        """One image for several prompts: its latents repeated, as diffusers does."""
        return latents.repeat(len(request.prompts) // latents.shape[0], 1, 1, 1)
