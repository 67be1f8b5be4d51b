"""The plain text-to-image pipeline: one call runs a batch of requests to their images.

`TextToImagePipeline(requests, settings)` prepares each request with the text-to-image task
(`pipelines/tasks/text_to_image.py`), steps all of them together with the shared denoise step
(`pipelines/denoise.py`) until done, and decodes them. Request-level batching runs exactly this;
the step batcher (`pipelines/step_batcher.py`) drives the same task and step function request
by request, so the three give the same image for the same request.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from pathlib import Path

import numpy as np
import torch

from sdserve_backend.pipelines.components import DiffusionComponents
from sdserve_backend.pipelines.denoise import DenoisingState, denoise_step, embed_guidance
from sdserve_backend.pipelines.lora_library import DEFAULT_CAPACITY as DEFAULT_LORA_CAPACITY
from sdserve_backend.pipelines.lora_library import LoraLibrary
from sdserve_backend.pipelines.lora_slots import DEFAULT_MAX_RANK, DEFAULT_SLOTS
from sdserve_backend.pipelines.prompt_cache import PromptCache
from sdserve_backend.pipelines.prompts import (
    DEFAULT_PROMPT_CACHE_SIZE,
    MAX_CHARS_PER_TOKEN,
    PromptEmbeddings,
    PromptEncoder,
)
from sdserve_backend.pipelines.requests import MAX_SEED, GenerationRequest, GenerationSettings
from sdserve_backend.pipelines.tasks import Task
from sdserve_backend.pipelines.tasks.image_to_image import ImageToImage
from sdserve_backend.pipelines.tasks.inpaint import Inpaint
from sdserve_backend.pipelines.tasks.refined import RefinedTextToImage
from sdserve_backend.pipelines.tasks.text_to_image import TextToImage

__all__ = [
    "DEFAULT_PROMPT_CACHE_SIZE",
    "MAX_CHARS_PER_TOKEN",
    "MAX_SEED",
    "DenoisingState",
    "GenerationRequest",
    "GenerationSettings",
    "PromptEmbeddings",
    "TextToImagePipeline",
    "split_per_request",
]


class TextToImagePipeline:
    """Stable Diffusion text-to-image over loaded `DiffusionComponents`."""

    def __init__(self, components: DiffusionComponents, prompt_cache_size: int = DEFAULT_PROMPT_CACHE_SIZE,
                 lora_dir: Path | None = None, lora_cache_size: int = DEFAULT_LORA_CAPACITY,
                 refiner: DiffusionComponents | None = None, lora_slots: int = DEFAULT_SLOTS,
                 lora_max_rank: int = DEFAULT_MAX_RANK) -> None:
        """`refiner`: an SDXL refiner's components that finish text-to-image requests asking for
        it (`GenerationRequest.high_noise_fraction`, `tasks/refined.py`). `lora_slots` and
        `lora_max_rank`: the slot tables of the engine's LoRA graphs (`lora_slots.py`)."""
        self.components = components
        # The LoRAs of `lora_dir`, applied per request without touching the base weights.
        self.loras = LoraLibrary(components, lora_dir, lora_cache_size, lora_slots, lora_max_rank)
        self.prompt_encoder = PromptEncoder(components, prompt_cache_size, self.loras)
        self.task = TextToImage(components, self.prompt_encoder)
        self.image_tasks: dict[str, Task] = {
            task.name: task for task in (ImageToImage(components, self.prompt_encoder), Inpaint(components, self.prompt_encoder))
        }
        self.refiner = refiner
        self.refined_task: RefinedTextToImage | None = None
        if refiner is not None:
            refiner_task = ImageToImage(refiner, PromptEncoder(refiner, prompt_cache_size))
            self.refined_task = RefinedTextToImage(self.task, refiner_task)

    def task_for(self, request: GenerationRequest) -> Task:
        """The task that runs `request`: inpainting with a mask, image-to-image with an image,
        else text-to-image (finished by the refiner when the request asks for it)."""
        if request.task_name == "text_to_image" and self.refined_task is not None and uses_refiner(request):
            return self.refined_task
        return self.image_tasks.get(request.task_name, self.task)

    @property
    def prompt_cache(self) -> PromptCache:
        return self.prompt_encoder.cache

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

        # 2. Prepare each request: its conditioning, its own scheduler, its latents from its seed
        states = [self.prepare(self.task_for(request), request, settings) for request in requests]

        # 3. Denoise them together, one UNet call per step for each group that can share one
        groups: dict[Hashable, list[DenoisingState]] = {}
        for request, state in zip(requests, states, strict=True):
            groups.setdefault(self.task_for(request).batch_key(request, settings), []).append(state)
        reported = 0
        while not all(state.done for state in states):
            for group in groups.values():
                self.denoise_batch(group)
            step = states[0].completed_steps(settings.steps)
            if on_step is not None and step > reported:
                reported = step
                on_step(step, settings.steps)

        # 4. Decode (each task with its own VAE) and hand each request its images
        tasks = [self.task_for(request) for request in requests]
        if all(task is tasks[0] for task in tasks):
            images = tasks[0].finish(torch.cat([state.latents for state in states]))
            return finish_per_request(images, requests, states)
        return [finish_per_request(task.finish(state.latents), [request], [state])[0]
                for task, request, state in zip(tasks, requests, states, strict=True)]

    def prepare(self, task: Task, request: GenerationRequest, settings: GenerationSettings) -> DenoisingState:
        """The task's state for `request`, with the request's LoRAs for its rows of each UNet call
        (every task's: a task's own conditioning applies their text-encoder parts)."""
        state = task.prepare(request, settings)
        state.loras = request.loras
        if self.components.guidance_embedding_dim is not None:
            embed_guidance(state, self.components.guidance_embedding_dim)
        return state

    def check_inputs(self, requests: Sequence[GenerationRequest], settings: GenerationSettings) -> None:
        """Raise ValueError naming the argument and its value for anything this model cannot run."""
        if len(requests) == 0:
            raise ValueError("requests must hold at least one request, got none")
        for request in requests:
            self.task_for(request).check(request, settings)

    def denoise_batch(self, states: Sequence[DenoisingState]) -> None:
        """One step of each of `states`, with one UNet call for all (`denoise.denoise_step`); each
        state's LoRAs apply to its own rows."""
        unet = self.components.unet
        # States handed to the refiner (`tasks/refined.py`) take their own call on its UNet.
        own = [state for state in states if state.unet is None]
        refined = [state for state in states if state.unet is not None]
        if refined:
            denoise_step(refined[0].unet, refined)
        if not own:
            return
        with self.loras.unet_call(unet, [(state.rows, state.loras) for state in own]):
            denoise_step(unet, own)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents -> uint8 images [B, H, W, 3] on the host."""
        return self.task.finish(latents)


def uses_refiner(request: GenerationRequest) -> bool:
    """Whether a request asks for the refiner to finish it (a high-noise fraction under 1)."""
    return request.high_noise_fraction is not None and request.high_noise_fraction != 1.0


def finish_per_request(
    images: np.ndarray, requests: Sequence[GenerationRequest], states: Sequence[DenoisingState]
) -> list[np.ndarray]:
    """Each request's share of a decoded batch, after its task's last touch (`after_decode`)."""
    shares = split_per_request(images, requests)
    return [share if state.after_decode is None else state.after_decode(share) for share, state in zip(shares, states, strict=True)]


def split_per_request(images: np.ndarray, requests: Sequence[GenerationRequest]) -> list[np.ndarray]:
    """Cut a batch of images back into each request's share, in request order."""
    bounds = np.cumsum([len(request.prompts) for request in requests])[:-1]
    return list(np.split(images, bounds))
