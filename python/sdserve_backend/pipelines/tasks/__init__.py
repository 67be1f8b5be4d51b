"""Tasks: what turns one kind of request into denoising work and the work back into images.

A task is a small module in the diffusers style around the shared step (`pipelines/denoise.py`):

- `check(request, settings)` raises ValueError naming the argument for anything it cannot run;
- `prepare(request, settings) -> DenoisingState`: the request's conditioning, its own scheduler
  and its initial latents (drawn from its own seed);
- `batch_key(request, settings)`: requests with equal keys may share UNet calls (same latent
  size, same UNet and adapters);
- `finish(latents) -> images`: decoded uint8 [B, H, W, 3] on the host.

The plain pipeline (`TextToImagePipeline`), request-level batching (which runs it) and the step
batcher all drive tasks through this interface, so a new task (image-to-image, inpainting) is
one new module here and runs on all three.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Protocol

import numpy as np
import torch

from sdserve_backend.pipelines.denoise import DenoisingState
from sdserve_backend.pipelines.requests import GenerationSettings


class Task(Protocol):
    name: str

    def check(self, request: Any, settings: GenerationSettings) -> None: ...

    def batch_key(self, request: Any, settings: GenerationSettings) -> Hashable: ...

    def prepare(self, request: Any, settings: GenerationSettings) -> DenoisingState: ...

    def finish(self, latents: torch.Tensor) -> np.ndarray: ...
