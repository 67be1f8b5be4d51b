"""The VAE's half of a run: latents back into pixels."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderKL


@torch.inference_mode()
def decode_latents(vae: AutoencoderKL, latents: torch.Tensor) -> np.ndarray:
    """Latents -> uint8 images [B, H, W, 3] on the host."""
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
