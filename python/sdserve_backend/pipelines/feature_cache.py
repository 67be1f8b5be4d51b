"""Feature caching across denoising steps (DeepCache: Ma, Fang and Wang, 2024).

A UNet's deep features change little from one denoising step to the next, while its outermost
blocks (the first down block and the last up block, at full latent resolution) carry the detail.
With a cache interval N, every N-th step runs the whole UNet and keeps the input of its last up
block (`forward_keeping_features`); the steps between run only the input convolution, the first
down block (for the skip connections the last up block reads), the last up block on the kept
features, and the output layers (`forward_from_features`). Interval 1 never reuses anything.

Both functions are the diffusers `UNet2DConditionModel.forward` for the Stable Diffusion 1.x/2.x
and XL configurations, split at that point: the full pass computes exactly what the model's own
forward computes. Other configurations (class embeddings, image conditioning, ControlNet
residuals) are not split: `supports` says no and the caller runs every step in full.
"""

from __future__ import annotations

from typing import Any

import torch

# The addition embeddings the split forward handles: none (SD 1.x/2.x) and SDXL's text + time.
_ADDITION_EMBEDDINGS = (None, "text_time")


def supports(unet: Any) -> bool:
    """True when `unet`'s configuration is one the split forward computes exactly."""
    config = unet.config
    if config.get("class_embed_type") is not None or config.get("num_class_embeds") is not None:
        return False
    if config.get("addition_embed_type") not in _ADDITION_EMBEDDINGS or config.get("encoder_hid_dim_type") is not None:
        return False
    if config.get("center_input_sample", False) or len(unet.down_blocks) < 2:
        return False
    # The last up block reads the input convolution's output and the first down block's resnets.
    return len(unet.up_blocks[-1].resnets) <= 1 + len(unet.down_blocks[0].resnets)


def forward_keeping_features(
    unet: Any,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    added_cond_kwargs: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The UNet's prediction for `sample`, and the features its last up block starts from."""
    emb, encoder_hidden_states = _embeddings(unet, sample, timestep, encoder_hidden_states, added_cond_kwargs)
    upsample_factor = 2**unet.num_upsamplers
    forward_upsample_size = any(side % upsample_factor != 0 for side in sample.shape[-2:])

    sample = unet.conv_in(sample)
    skips: tuple[torch.Tensor, ...] = (sample,)
    for block in unet.down_blocks:
        sample, outputs = _down(block, sample, emb, encoder_hidden_states)
        skips += outputs
    if unet.mid_block is not None:
        if getattr(unet.mid_block, "has_cross_attention", False):
            sample = unet.mid_block(sample, emb, encoder_hidden_states=encoder_hidden_states)
        else:
            sample = unet.mid_block(sample, emb)
    features = sample
    last = len(unet.up_blocks) - 1
    for index, block in enumerate(unet.up_blocks):
        taken = len(block.resnets)
        block_skips, skips = skips[-taken:], skips[:-taken]
        upsample_size = skips[-1].shape[2:] if index != last and forward_upsample_size else None
        if index == last:
            features = sample
        sample = _up(block, sample, emb, block_skips, encoder_hidden_states, upsample_size)
    return _output(unet, sample), features


def forward_from_features(
    unet: Any,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    features: torch.Tensor,
    added_cond_kwargs: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The UNet's prediction for `sample` with the deep features of an earlier step
    (`forward_keeping_features`'s second result, one row per row of `sample`)."""
    emb, encoder_hidden_states = _embeddings(unet, sample, timestep, encoder_hidden_states, added_cond_kwargs)
    sample = unet.conv_in(sample)
    # The first down block's own output (downsampled) feeds the deeper blocks only: not needed.
    _, outputs = _down(unet.down_blocks[0], sample, emb, encoder_hidden_states)
    skips = (sample, *outputs)
    last = unet.up_blocks[-1]
    sample = _up(last, features, emb, skips[: len(last.resnets)], encoder_hidden_states, None)
    return _output(unet, sample)


def _embeddings(
    unet: Any,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    added_cond_kwargs: dict[str, torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
    added = unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs or {})
    if added is not None:
        emb = emb + added
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    return emb, unet.process_encoder_hidden_states(encoder_hidden_states=encoder_hidden_states,
                                                   added_cond_kwargs=added_cond_kwargs or {})


def _down(block: Any, sample: torch.Tensor, emb: torch.Tensor,
          encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    if getattr(block, "has_cross_attention", False):
        return block(hidden_states=sample, temb=emb, encoder_hidden_states=encoder_hidden_states)
    return block(hidden_states=sample, temb=emb)


def _up(block: Any, sample: torch.Tensor, emb: torch.Tensor, skips: tuple[torch.Tensor, ...],
        encoder_hidden_states: torch.Tensor, upsample_size: Any) -> torch.Tensor:
    if getattr(block, "has_cross_attention", False):
        return block(hidden_states=sample, temb=emb, res_hidden_states_tuple=skips,
                     encoder_hidden_states=encoder_hidden_states, upsample_size=upsample_size)
    return block(hidden_states=sample, temb=emb, res_hidden_states_tuple=skips, upsample_size=upsample_size)


def _output(unet: Any, sample: torch.Tensor) -> torch.Tensor:
    if unet.conv_norm_out is not None:
        sample = unet.conv_act(unet.conv_norm_out(sample))
    return unet.conv_out(sample)
