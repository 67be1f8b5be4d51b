"""Inpainting: repaint the white part of a mask, keep the rest, as diffusers'
`StableDiffusionInpaintPipeline` and `StableDiffusionXLInpaintPipeline` do it.

Two kinds of UNet:
- a 9-channel inpainting UNet takes, beside the latents, the mask and the masked image's latents
  as extra input channels (the `extra_channels` seam of the denoise step);
- an ordinary 4-channel UNet denoises the whole image; after each step the known region is put
  back from the image's latents noised to the next timestep (masked latent blending, the
  `after_step` seam; Lugmayr et al. 2022, "RePaint", without resampling).

`mask_blur` softens the mask's edge first (diffusers' `VaeImageProcessor.blur`). The mask the UNet
sees is binarized (white >= 0.5), as diffusers' mask processor does. After decoding, the input
image is pasted back where the (blurred) mask is not white (diffusers' `apply_overlay`), so the
unmasked pixels come back exactly as they were sent, not as the VAE's round trip of them.

The generator's draws come in diffusers' order: the image's latent sample (when the 4-channel
blending needs it or strength < 1), the noise, then the masked image's latent sample.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from sdserve_backend.pipelines.components import DiffusionComponents
from sdserve_backend.pipelines.denoise import DenoisingState, start_denoising
from sdserve_backend.pipelines.prompts import PromptEncoder
from sdserve_backend.pipelines.requests import GenerationRequest, GenerationSettings
from sdserve_backend.pipelines.tasks.image_to_image import ImageToImage
from sdserve_backend.quoting import quoted

# The most blur a mask may take, in pixels.
MAX_MASK_BLUR = 64


class Inpaint(ImageToImage):
    """The inpainting task over loaded `DiffusionComponents` and a shared prompt encoder."""

    name = "inpaint"
    # diffusers' default: the masked region starts from pure noise.
    default_strength = 1.0

    def __init__(self, components: DiffusionComponents, prompt_encoder: PromptEncoder) -> None:
        super().__init__(components, prompt_encoder)
        factor = components.vae_scale_factor
        self.mask_processor = VaeImageProcessor(
            vae_scale_factor=factor, do_normalize=False, do_binarize=True, do_convert_grayscale=True
        )

    def check(self, request: GenerationRequest, settings: GenerationSettings) -> None:
        super().check(request, settings)
        assert request.images is not None
        if request.masks is None or len(request.masks) not in (1, len(request.prompts)):
            count = 0 if request.masks is None else len(request.masks)
            raise ValueError(f"input 'mask' must hold 1 or {len(request.prompts)} masks (one per prompt), got {count}")
        if len(request.masks) > len(request.images) and len(request.images) != 1:
            raise ValueError(f"input 'mask' holds {len(request.masks)} masks for {len(request.images)} images")
        for index, mask in enumerate(request.masks):
            image = request.images[index if len(request.images) > 1 else 0]
            if mask.size != image.size:
                raise ValueError(
                    f"input 'mask' {index} is {mask.width}x{mask.height} but its image is {image.width}x{image.height}; "
                    "a mask must be the size of its image"
                )
        if not isinstance(request.mask_blur, int) or not 0 <= request.mask_blur <= MAX_MASK_BLUR:
            raise ValueError(f"mask_blur must be an integer from 0 to {MAX_MASK_BLUR}, got {quoted(request.mask_blur)}")

    @torch.inference_mode()
    def prepare(self, request: GenerationRequest, settings: GenerationSettings) -> DenoisingState:
        """The request's conditioning, its scheduler (part-way when strength < 1), its latents and
        the mask's part in the denoising: extra UNet channels or blending after each step."""
        assert request.images is not None and request.masks is not None
        components = self.components
        rows = len(request.prompts)
        # 1. Encode the prompts
        conditioning = self.conditioning(request, settings)
        # 2. Prepare the scheduler and the timesteps that `strength` leaves
        scheduler = self.make_scheduler(settings, request.seed)
        strength = self.strength(request)
        timesteps = self.start_timesteps(scheduler, settings.steps, strength)
        starts_from_noise = strength == 1.0
        # 3. The image and the mask at the request's size; the mask blurred, then binarized
        masks = self.blurred_masks(request)
        init_image = self.preprocess_images(request, settings)
        mask = self.mask_processor.preprocess(masks, height=settings.height, width=settings.width)
        masked_image = init_image * (mask < 0.5)
        # 4. Initial latents: noise, or the image's latents noised to the first timestep
        generator = torch.Generator(device="cpu").manual_seed(request.seed)
        blends = not components.is_inpainting
        image_latents = None
        if blends or not starts_from_noise:
            image_latents = self.repeat_per_prompt(self.encode_for_inpainting(init_image, generator), request)
        factor = components.vae_scale_factor
        shape = (rows, int(components.vae.config.latent_channels), settings.height // factor, settings.width // factor)
        noise = randn_tensor(shape, generator=generator, device=components.device, dtype=components.dtype)
        if starts_from_noise:
            latents = noise * scheduler.init_noise_sigma
        else:
            assert image_latents is not None
            latents = scheduler.add_noise(image_latents, noise, timesteps[:1].repeat(rows))
        # 5. The mask at latent size and the masked image's latents
        latent_mask = torch.nn.functional.interpolate(mask, size=shape[-2:]).to(components.device, components.dtype)
        latent_mask = self.repeat_per_prompt(latent_mask, request)
        masked_image_latents = self.repeat_per_prompt(self.encode_for_inpainting(masked_image, generator), request)
        state = start_denoising(scheduler, latents, [self.step_noise_generator(request, generator)] * rows, *conditioning,
                                guidance_scale=settings.guidance_scale, timesteps=timesteps,
                               guidance_interval=(settings.guidance_start, settings.guidance_end),
                               cache_interval=settings.cache_interval)
        # 6. The mask's part: UNet input channels, or blending the known region back after each step
        if components.is_inpainting:
            state.extra_channels = torch.cat([latent_mask, masked_image_latents], dim=1)
        else:
            assert image_latents is not None
            state.after_step = _blend_known_region(image_latents, noise, latent_mask)
        state.after_decode = self.paste_back(request, settings, masks)
        return state

    # -----------------------------------------------------------------------------------------
    # Stages

    def blurred_masks(self, request: GenerationRequest) -> list[Image.Image]:
        assert request.masks is not None
        if request.mask_blur == 0:
            return list(request.masks)
        return [VaeImageProcessor.blur(mask, request.mask_blur) for mask in request.masks]

    def encode_for_inpainting(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Pixels -> latents as the inpainting pipelines encode them: scaled only (for SDXL too)."""
        vae = self.components.vae
        pixels = pixels.to(device=self.components.device, dtype=vae.dtype)
        latents = vae.encode(pixels).latent_dist.sample(generator).to(self.components.dtype)
        return vae.config.scaling_factor * latents

    def paste_back(self, request: GenerationRequest, settings: GenerationSettings, masks: list[Image.Image]):
        """Decoded images -> the input image where the mask is black, blended along its blurred edge
        (diffusers' `apply_overlay`): unmasked pixels are the client's own, exactly."""
        assert request.images is not None
        size = (settings.width, settings.height)
        images = [image if image.size == size else image.resize(size, Image.Resampling.LANCZOS) for image in request.images]
        masks = [mask if mask.size == size else mask.resize(size, Image.Resampling.LANCZOS) for mask in masks]
        processor = self.image_processor

        def paste(decoded: np.ndarray) -> np.ndarray:
            out = []
            for index, pixels in enumerate(decoded):
                image = images[index if len(images) > 1 else 0]
                mask = masks[index if len(masks) > 1 else 0]
                out.append(np.asarray(processor.apply_overlay(mask, image, Image.fromarray(pixels))))
            return np.stack(out)

        return paste


def _blend_known_region(image_latents: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor):
    """After step i: outside the mask, the image's latents noised to timestep i + 1 (or clean
    after the last step), as diffusers' inpainting pipelines blend for a 4-channel UNet."""

    def blend(state: DenoisingState) -> None:
        known = image_latents
        if state.step_index < len(state.timesteps):
            next_timestep = state.timesteps_on_host[state.step_index]
            known = state.scheduler.add_noise(image_latents, noise, torch.tensor([next_timestep]))
        state.latents = (1 - mask) * known + mask * state.latents

    return blend
