"""Built-in tiny Stable Diffusion models: the real architectures at toy size, with random weights.

They let the server, the tests and CI run the whole text-to-image path on a CPU in seconds. The
images are noise, but every component (CLIP tokenizer and text encoders, conditional UNet, KL VAE
with its 8x downsampling, scheduler) is the one a real checkpoint uses, stored in the diffusers
folder layout so that the same loading code serves real and tiny weights. Each comes with tiny
LoRA files in its `loras/` folder (`tiny_lora.py`).

    python -m sdserve_backend.tiny_model --out DIR [--variant sd|sdxl|sd-inpaint|sdxl-inpaint|sd21|sdxl_refiner|
                                                    sd-turbo|sdxl-turbo|sd-lcm|sdxl-lcm] [--seed 0]

The `-inpaint` variants have a 9-channel inpainting UNet (latents, mask, masked image latents), as
Stable Diffusion's inpainting checkpoints do; everything else is their base variant's. `sd21` is
Stable Diffusion 2.1's architecture (an OpenCLIP-style text encoder with GELU, a v-prediction DDIM
scheduler, linear-projection transformers with a head size per block, attention upcast, "!" as the
padding token). `sdxl_refiner` is the SDXL refiner's: only the second text encoder, a UNet
conditioned on an aesthetic score instead of the target size; its second text encoder and VAE are
`sdxl`'s (same seed), as the published refiner's are the base's. The few-step variants are their
base variant with what their published models change: `-turbo` the scheduler SD-Turbo and
SDXL-Turbo ship (Euler ancestral, "trailing" timesteps), `-lcm` an LCM UNet that takes the guidance
scale as an embedded timestep condition (`time_cond_proj_dim`) and the LCM scheduler.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from sdserve_backend.tiny_lora import FILES as TINY_LORAS
from sdserve_backend.tiny_lora import make_tiny_loras

VARIANTS = ("sd", "sdxl", "sd-inpaint", "sdxl-inpaint", "sd21", "sdxl_refiner", "sd-turbo", "sdxl-turbo", "sd-lcm",
            "sdxl-lcm")
# The LCM UNet's guidance-embedding width (LCM-distilled Stable Diffusion uses 256).
LCM_TIME_COND_PROJ_DIM = 64
# An inpainting UNet's input: 4 latent channels, the mask, 4 channels of the masked image's latents.
INPAINTING_IN_CHANNELS = 9
MARKER_FILE = "sdserve_tiny_model.json"
# Bumped whenever the generated architecture or weights change, so that old folders are rebuilt.
GENERATOR_REVISION = 1

# Everything the model consists of, for both variants.
MODEL_ENTRIES = (
    "model_index.json",
    "scheduler",
    "unet",
    "vae",
    "text_encoder",
    "tokenizer",
    "text_encoder_2",
    "tokenizer_2",
)

IMAGE_SIZE = 128
VAE_SCALE_FACTOR = 8
TOKENIZER_MAX_LENGTH = 77
TEXT_HIDDEN_SIZE = 32
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
# Stable Diffusion 2.x's tokenizer pads with "!" (OpenCLIP's padding id 0), not the end token.
SD2_PAD_TOKEN = "!"

# A handful of English merges so that common words become single tokens; the rest of any prompt
# falls back to the byte-level alphabet, so every input is still encodable.
TOKENIZER_MERGES: tuple[tuple[str, str], ...] = (
    ("t", "h"),
    ("th", "e</w>"),
    ("a", "n"),
    ("an", "d</w>"),
    ("o", "f</w>"),
    ("i", "n"),
    ("e", "r"),
    ("o", "n</w>"),
    ("a", "t</w>"),
    ("c", "at</w>"),
    ("d", "o"),
    ("do", "g</w>"),
    ("p", "h"),
    ("ph", "o"),
    ("pho", "t"),
    ("phot", "o</w>"),
)


def make_tiny_model(out_dir: Path, variant: str = "sd", seed: int = 0) -> Path:
    """Write a tiny diffusers model folder for `variant` ("sd" or "sdxl") to `out_dir`.

    Deterministic for a given (variant, seed). Does nothing when `out_dir` already holds a complete
    model made with the same variant and seed. Returns `out_dir`.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    out_dir = Path(out_dir)
    if is_complete_tiny_model(out_dir, variant, seed):
        return out_dir

    # The marker goes last, so an interrupted run never leaves a folder that looks complete. Only
    # the model's own entries are replaced: the folder may hold other files (e.g. a README).
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER_FILE).unlink(missing_ok=True)
    in_channels = INPAINTING_IN_CHANNELS if variant.endswith("-inpaint") else 4
    time_cond_proj_dim = LCM_TIME_COND_PROJ_DIM if variant.endswith("-lcm") else None
    if variant == "sdxl_refiner":
        pipeline = _build_sdxl_refiner_pipeline(seed)
    elif variant.startswith("sdxl"):
        pipeline = _build_sdxl_pipeline(seed, in_channels, time_cond_proj_dim)
    elif variant == "sd21":
        pipeline = _build_sd21_pipeline(seed)
    else:
        pipeline = _build_sd_pipeline(seed, in_channels, time_cond_proj_dim)
    if variant.endswith("-turbo"):
        pipeline.scheduler = _turbo_scheduler()
    elif variant.endswith("-lcm"):
        pipeline.scheduler = LCMScheduler.from_config(pipeline.scheduler.config)
    with tempfile.TemporaryDirectory(prefix=".tiny-model-", dir=out_dir) as staging:
        staging_dir = Path(staging)
        pipeline.save_pretrained(staging_dir, safe_serialization=True)
        if variant != "sdxl_refiner":
            _write_tokenizer(staging_dir / "tokenizer", pad_token=SD2_PAD_TOKEN if variant == "sd21" else EOS_TOKEN)
        if variant.startswith("sdxl"):
            _write_tokenizer(staging_dir / "tokenizer_2")
        # Also drops what the other variant wrote here before (text_encoder_2/, tokenizer_2/).
        for name in MODEL_ENTRIES:
            _remove(out_dir / name)
        for entry in sorted(staging_dir.iterdir()):
            _remove(out_dir / entry.name)
            entry.rename(out_dir / entry.name)
    if variant != "sdxl_refiner":
        make_tiny_loras(out_dir)
    (out_dir / MARKER_FILE).write_text(json.dumps(_marker(variant, seed), indent=2) + "\n")
    return out_dir


def is_complete_tiny_model(out_dir: Path, variant: str, seed: int) -> bool:
    """True when `out_dir` holds every file of a tiny model made with this variant and seed."""
    marker_path = Path(out_dir) / MARKER_FILE
    if not marker_path.is_file():
        return False
    try:
        marker = json.loads(marker_path.read_text())
    except json.JSONDecodeError:
        return False
    if marker != _marker(variant, seed):
        return False
    return all((Path(out_dir) / name).is_file() for name in _expected_files(variant))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _marker(variant: str, seed: int) -> dict[str, object]:
    return {"variant": variant, "seed": seed, "revision": GENERATOR_REVISION}


def _expected_files(variant: str) -> list[str]:
    files = [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    if variant != "sdxl_refiner":
        files += [
            *(f"loras/{name}.safetensors" for name in TINY_LORAS),
            "text_encoder/config.json",
            "text_encoder/model.safetensors",
            "tokenizer/vocab.json",
            "tokenizer/merges.txt",
        ]
    if variant.startswith("sdxl"):
        files += [
            "text_encoder_2/config.json",
            "text_encoder_2/model.safetensors",
            "tokenizer_2/vocab.json",
            "tokenizer_2/merges.txt",
        ]
    return files


# ---------------------------------------------------------------------------------------------
# Components


def _build_sd_pipeline(
    seed: int, in_channels: int = 4, time_cond_proj_dim: int | None = None
) -> StableDiffusionPipeline | StableDiffusionInpaintPipeline:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // VAE_SCALE_FACTOR,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN_SIZE,
        attention_head_dim=4,
        time_cond_proj_dim=time_cond_proj_dim,
    )
    torch.manual_seed(seed + 1)
    vae = _build_vae(scaling_factor=0.18215, force_upcast=False)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config(hidden_act="quick_gelu", projection_dim=TEXT_HIDDEN_SIZE))
    # The scheduler Stable Diffusion 1.5 ships with.
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    pipeline_class = StableDiffusionInpaintPipeline if in_channels == INPAINTING_IN_CHANNELS else StableDiffusionPipeline
    return pipeline_class(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_build_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_sdxl_pipeline(
    seed: int, in_channels: int = 4, time_cond_proj_dim: int | None = None
) -> StableDiffusionXLPipeline | StableDiffusionXLInpaintPipeline:
    time_embed_dim = 8
    # SDXL's micro-conditioning: six time ids (original size, crop top-left, target size).
    added_embed_dim = 6 * time_embed_dim + TEXT_HIDDEN_SIZE
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // VAE_SCALE_FACTOR,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        cross_attention_dim=2 * TEXT_HIDDEN_SIZE,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=added_embed_dim,
        time_cond_proj_dim=time_cond_proj_dim,
    )
    torch.manual_seed(seed + 1)
    vae = _build_vae(scaling_factor=0.13025, force_upcast=True)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config(hidden_act="quick_gelu", projection_dim=TEXT_HIDDEN_SIZE))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(hidden_act="gelu", projection_dim=TEXT_HIDDEN_SIZE))
    scheduler = _sdxl_scheduler()
    pipeline_class = StableDiffusionXLInpaintPipeline if in_channels == INPAINTING_IN_CHANNELS else StableDiffusionXLPipeline
    return pipeline_class(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=_build_tokenizer(),
        tokenizer_2=_build_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def _build_sd21_pipeline(seed: int) -> StableDiffusionPipeline:
    """Stable Diffusion 2.1's architecture as its published configs (stabilityai/stable-diffusion-2-1)
    describe it, at toy size."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // VAE_SCALE_FACTOR,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN_SIZE,
        # 2.x: a head size per block, linear projections in and out of the transformers, and
        # attention computed in float32 (2.1's upcast_attention).
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        upcast_attention=True,
    )
    torch.manual_seed(seed + 1)
    vae = _build_vae(scaling_factor=0.18215, force_upcast=False)
    torch.manual_seed(seed + 2)
    # OpenCLIP ViT-H with GELU; the published config drops its last layer, so the last hidden state
    # (after the final layer norm) is what 2.x conditions on, as diffusers' pipeline reads it.
    text_encoder = CLIPTextModel(_text_config(hidden_act="gelu", projection_dim=TEXT_HIDDEN_SIZE,
                                              pad_token=SD2_PAD_TOKEN))
    # The scheduler Stable Diffusion 2.1 ships with: DDIM predicting v (Salimans & Ho 2022).
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_build_tokenizer(pad_token=SD2_PAD_TOKEN),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_sdxl_refiner_pipeline(seed: int) -> StableDiffusionXLImg2ImgPipeline:
    """The SDXL refiner's architecture (stabilityai/stable-diffusion-xl-refiner-1.0) at toy size:
    no first text encoder, and five time ids (original size, crop, aesthetic score)."""
    time_embed_dim = 8
    added_embed_dim = 5 * time_embed_dim + TEXT_HIDDEN_SIZE
    torch.manual_seed(seed + 10)
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // VAE_SCALE_FACTOR,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        # Conditioned on the second encoder alone.
        cross_attention_dim=TEXT_HIDDEN_SIZE,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=added_embed_dim,
    )
    # The base's VAE and second text encoder: the same seeds as `_build_sdxl_pipeline`.
    torch.manual_seed(seed + 1)
    vae = _build_vae(scaling_factor=0.13025, force_upcast=True)
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(hidden_act="gelu", projection_dim=TEXT_HIDDEN_SIZE))
    return StableDiffusionXLImg2ImgPipeline(
        vae=vae,
        text_encoder=None,
        text_encoder_2=text_encoder_2,
        tokenizer=None,
        tokenizer_2=_build_tokenizer(),
        unet=unet,
        scheduler=_sdxl_scheduler(),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )


def _turbo_scheduler() -> EulerAncestralDiscreteScheduler:
    """The scheduler SD-Turbo and SDXL-Turbo ship: Euler ancestral, "trailing" timesteps (so one
    step starts at the last training timestep)."""
    return EulerAncestralDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        prediction_type="epsilon",
        steps_offset=1,
        timestep_spacing="trailing",
    )


def _build_vae(scaling_factor: float, force_upcast: bool) -> AutoencoderKL:
    # Four block levels, as in the real VAE, give the same 8x spatial downsampling.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
        scaling_factor=scaling_factor,
        force_upcast=force_upcast,
    )


def _sdxl_scheduler() -> EulerDiscreteScheduler:
    """The scheduler Stable Diffusion XL 1.0 (base and refiner) ships with."""
    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        interpolation_type="linear",
        prediction_type="epsilon",
        steps_offset=1,
        timestep_spacing="leading",
        use_karras_sigmas=False,
    )


def _text_config(hidden_act: str, projection_dim: int, pad_token: str = EOS_TOKEN) -> CLIPTextConfig:
    vocab = build_tokenizer_vocab()
    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=TEXT_HIDDEN_SIZE,
        intermediate_size=64,
        # At least two layers: SDXL conditions on the penultimate hidden state.
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=TOKENIZER_MAX_LENGTH,
        hidden_act=hidden_act,
        projection_dim=projection_dim,
        bos_token_id=vocab[BOS_TOKEN],
        eos_token_id=vocab[EOS_TOKEN],
        pad_token_id=vocab[pad_token],
    )


# ---------------------------------------------------------------------------------------------
# Tokenizer


def byte_level_alphabet() -> list[str]:
    """The 256 printable characters that byte-level BPE uses to stand for the 256 byte values.

    Printable Latin-1 bytes stand for themselves; every other byte maps to the next unused code
    point from 256 upwards, so that no token contains whitespace or control characters.
    """
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    alphabet: list[str] = []
    next_free = 256
    for byte in range(256):
        if byte in printable:
            alphabet.append(chr(byte))
        else:
            alphabet.append(chr(next_free))
            next_free += 1
    return alphabet


def build_tokenizer_vocab() -> dict[str, int]:
    """Token -> id: the alphabet, the alphabet as word ends, the merged tokens, then the specials."""
    alphabet = byte_level_alphabet()
    tokens = alphabet + [char + "</w>" for char in alphabet]
    tokens += ["".join(pair) for pair in TOKENIZER_MERGES]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: index for index, token in enumerate(tokens)}


def _write_tokenizer(folder: Path, pad_token: str = EOS_TOKEN) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():
        stale.unlink()
    vocab = build_tokenizer_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    merges = "#version: 0.2\n" + "".join(f"{left} {right}\n" for left, right in TOKENIZER_MERGES)
    (folder / "merges.txt").write_text(merges, encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": TOKENIZER_MAX_LENGTH,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": pad_token,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def _build_tokenizer(pad_token: str = EOS_TOKEN) -> CLIPTokenizer:
    return CLIPTokenizer(
        vocab=build_tokenizer_vocab(),
        merges=list(TOKENIZER_MERGES),
        model_max_length=TOKENIZER_MAX_LENGTH,
        pad_token=pad_token,
    )


# ---------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a tiny Stable Diffusion model in the diffusers layout.")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the model to")
    parser.add_argument("--variant", choices=VARIANTS, default="sd")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if is_complete_tiny_model(args.out, args.variant, args.seed):
        print(f"tiny {args.variant} model (seed {args.seed}) already complete at {args.out}; nothing to do")
        return 0
    make_tiny_model(args.out, args.variant, args.seed)
    print(f"wrote tiny {args.variant} model (seed {args.seed}) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
