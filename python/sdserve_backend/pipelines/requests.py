"""What a client asks the pipelines for: its prompts and seed, and the settings of its run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

MAX_SEED = 2**64 - 1
# diffusers' defaults for the SDXL refiner's aesthetic-score conditioning.
DEFAULT_AESTHETIC_SCORE = 6.0
DEFAULT_NEGATIVE_AESTHETIC_SCORE = 2.5


@dataclass(frozen=True)
class GenerationRequest:
    """One client request: its prompts (one image each) and the seed for all of them."""

    prompts: list[str]
    seed: int
    # One per prompt; None means "no negative prompt" (for SDXL: zero embeddings).
    negative_prompts: list[str | None] | None = None
    # Prompts longer than CLIP's 75 tokens: chunked and concatenated (True) or cut (False).
    chunk_prompts: bool = True
    # Image-to-image and inpainting: the input images (one per prompt, or one for all), RGB, and
    # the inpainting masks (mode "L", white = repaint), each the size of its image.
    images: tuple[Image.Image, ...] | None = field(default=None, compare=False)
    masks: tuple[Image.Image, ...] | None = field(default=None, compare=False)
    # How much of the schedule runs from the image (diffusers' `strength`); None: the task's default.
    strength: float | None = None
    # Gaussian blur radius for the mask, in pixels (diffusers' `VaeImageProcessor.blur`).
    mask_blur: int = 0

    # LoRAs for every image of the request (`lora_layers.ChosenLora`: a loaded adapter and a scale).
    loras: tuple[Any, ...] = ()
    # The SDXL refiner's conditioning (Podell et al. 2023, section 2.5): the aesthetic score its
    # positive rows and its negative rows are told.
    aesthetic_score: float = DEFAULT_AESTHETIC_SCORE
    negative_aesthetic_score: float = DEFAULT_NEGATIVE_AESTHETIC_SCORE
    # A base model with a refiner: the fraction of the schedule the base runs before the refiner
    # takes over (diffusers' denoising_end / denoising_start); None or 1.0: the base alone.
    high_noise_fraction: float | None = None

    @property
    def task_name(self) -> str:
        if self.masks is not None:
            return "inpaint"
        return "image_to_image" if self.images is not None else "text_to_image"

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
    # Fast modes (pipelines/denoise.py), off by default: classifier-free guidance only on the steps
    # within [guidance_start, guidance_end) as fractions of the schedule; the whole UNet every
    # `cache_interval`-th step and its outer blocks on kept deep features in between.
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    cache_interval: int = 1

    @property
    def uses_classifier_free_guidance(self) -> bool:
        return self.guidance_scale > 1.0
