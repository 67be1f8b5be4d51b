"""The architecture of `shapes_sd`: Stable Diffusion's components at a small size.

128x128 images, a KL VAE with SD's 8x downsampling (16x16x4 latents), a CLIP text encoder over the
learned caption tokenizer, and a conditional UNet, stored in diffusers' folder layout so that the
server loads it like any SD 1.x checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .tokenizer import MAX_LENGTH, write_tokenizer

IMAGE_SIZE = 128
LATENT_CHANNELS = 4
TEXT_HIDDEN_SIZE = 128
CHECKPOINT_FILES = {
    "unet": "unet.safetensors",
    "vae": "vae.safetensors",
    "text_encoder": "text_encoder.safetensors",
}
CHECKPOINT_META = "checkpoint.json"
# Settings other scheduler classes read from the model's scheduler config when a request picks
# them: the latents are not confined to [-1, 1] (DDIM would clip them), no final alpha of one,
# and PNDM without its Runge-Kutta warm-up, as Stable Diffusion 1.5 ships them.
SCHEDULER_SHARED_CONFIG = {"clip_sample": False, "set_alpha_to_one": False, "skip_prk_steps": True}


def build_vae(scaling_factor: float = 1.0) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 64, 64, 64),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=32,
        sample_size=IMAGE_SIZE,
        scaling_factor=scaling_factor,
    )


def build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN_SIZE,
        intermediate_size=4 * TEXT_HIDDEN_SIZE,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        hidden_act="quick_gelu",
        projection_dim=TEXT_HIDDEN_SIZE,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 8,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        block_out_channels=(64, 128, 176),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN_SIZE,
        attention_head_dim=8,  # diffusers reads this as the number of heads
        norm_num_groups=16,
    )


def build_scheduler() -> EulerDiscreteScheduler:
    """Stable Diffusion's noise schedule; Euler is the model's own sampler (see the README table)."""
    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        prediction_type="epsilon",
        timestep_spacing="trailing",
        steps_offset=1,
    )


def save_checkpoint(
    folder: Path,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    meta: dict[str, object],
) -> None:
    """Weights in float16, one file per component (each small enough to travel alone)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        state = {key: value.detach().to("cpu", torch.float16).contiguous() for key, value in module.state_dict().items()}
        save_file(state, str(folder / f".{CHECKPOINT_FILES[name]}.tmp"))
        (folder / f".{CHECKPOINT_FILES[name]}.tmp").rename(folder / CHECKPOINT_FILES[name])
    (folder / CHECKPOINT_META).write_text(json.dumps(meta, indent=2) + "\n")


def export_pipeline_folder(checkpoint: Path, out_dir: Path, tokenizer_dir: Path | None = None) -> Path:
    """Writes the diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/).

    The tokenizer is the one the checkpoint was trained with (its merges are in the checkpoint's
    metadata), or the one in `tokenizer_dir` for checkpoints that do not record it.
    """
    from diffusers import StableDiffusionPipeline

    meta = json.loads((checkpoint / CHECKPOINT_META).read_text())
    if "tokenizer_merges" in meta:
        merges = [(left, right) for left, right in meta["tokenizer_merges"]]
    elif tokenizer_dir is not None:
        lines = (tokenizer_dir / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
        merges = [(left, right) for left, right in (line.split(" ") for line in lines if line)]
    else:
        raise ValueError(f"{checkpoint} does not record its tokenizer: pass the folder of the one it was trained with")
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = write_tokenizer(out_dir / "tokenizer", merges)
    vae = build_vae(scaling_factor=float(meta["latent_scaling_factor"]))
    text_encoder = build_text_encoder(tokenizer)
    unet = build_unet()
    for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        state = load_file(str(checkpoint / CHECKPOINT_FILES[name]))
        missing, unexpected = module.load_state_dict(state, strict=False)
        # CLIP's position ids are a buffer that some versions do not save.
        missing = [key for key in missing if not key.endswith("position_ids")]
        if missing or unexpected:
            raise ValueError(f"{name}: checkpoint does not match the architecture: {missing=} {unexpected=}")
    pipeline = StableDiffusionPipeline(
        vae=vae.half(),
        text_encoder=text_encoder.half(),
        tokenizer=tokenizer,
        unet=unet.half(),
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(out_dir, safe_serialization=True)
    scheduler_config_path = out_dir / "scheduler" / "scheduler_config.json"
    scheduler_config = json.loads(scheduler_config_path.read_text())
    scheduler_config_path.write_text(json.dumps({**scheduler_config, **SCHEDULER_SHARED_CONFIG}, indent=2) + "\n")
    write_tokenizer(out_dir / "tokenizer", merges)  # save_pretrained may add files of its own; keep ours only
    return out_dir
