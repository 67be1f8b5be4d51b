"""Random inputs for one direct UNet call of a tiny model (the engine and LoRA-slot tests)."""
from __future__ import annotations

import torch

from sdserve_backend.pipelines.components import DiffusionComponents


def unet_inputs(parts: DiffusionComponents, rows: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """`rows` rows at the model's default size, a different timestep per row, seeded; SDXL's added
    text embeddings and time ids too."""
    generator = torch.Generator().manual_seed(seed)
    unet = parts.unet
    size = parts.default_image_size // parts.vae_scale_factor
    inputs = {
        "sample": torch.randn((rows, unet.config.in_channels, size, size), generator=generator),
        "timestep": torch.linspace(10.0, 900.0, rows),
        "encoder_hidden_states": torch.randn((rows, 77, unet.config.cross_attention_dim), generator=generator),
    }
    if parts.is_sdxl:
        width = unet.add_embedding.linear_1.in_features - 6 * unet.config.addition_time_embed_dim
        inputs["text_embeds"] = torch.randn((rows, width), generator=generator)
        inputs["time_ids"] = torch.tensor([[128.0, 128.0, 0.0, 0.0, 128.0, 128.0]]).repeat(rows, 1)
    return inputs
