#!/usr/bin/env python3
"""GPU row: a single-file SD 1.5 checkpoint loaded by sdserve (shipped configs, no config folder)
against diffusers' `from_single_file` with a config folder, same seed: PSNR of the images.

    PYTHONPATH=python python3 bench/gpu/single_file.py --out DIR [--tiny]

A full-size SD 1.5 (the shipped published configs) with RANDOM weights from a fixed seed is saved
as a diffusers folder (float16) and as one checkpoint in the original layout; no weights are
downloaded. sdserve loads the checkpoint alone and draws with its pipeline; diffusers loads it with
`StableDiffusionPipeline.from_single_file(config=<the folder>)` and draws with the same scheduler,
seed and steps. `--tiny` runs the same at toy size on the CPU in float32 (a check of the script;
the images are then expected to be equal). Writes results.json into --out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))

PROMPT = "a photo of a cat and a dog"
SEED = 1234
WEIGHTS_SEED = 0
PSNR_FLOOR_DB = 30.0
# Toy sizes for --tiny; everything else is the shipped SD 1.5 config.
TINY_UNET = {"block_out_channels": [32, 64], "layers_per_block": 1, "cross_attention_dim": 32,
             "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
             "sample_size": 16}
TINY_VAE = {"block_out_channels": [8, 16, 16, 16], "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 128}
TINY_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 1, "projection_dim": 32}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def write_random_model(folder: Path, tiny: bool, dtype: torch.dtype) -> None:
    """A diffusers folder of the shipped SD 1.5 architecture with random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdserve_backend.pipelines.single_file import ConfigFolder, clip_tokenizer

    configs = ConfigFolder("sd15")
    device = "cpu" if tiny else "cuda"
    parts: list[tuple[str, Any]] = []
    torch.manual_seed(WEIGHTS_SEED)
    with torch.device(device):
        unet_config = {k: v for k, v in configs.json("unet/config.json").items() if not k.startswith("_")}
        parts.append(("unet", UNet2DConditionModel.from_config({**unet_config, **(TINY_UNET if tiny else {})})))
        vae_config = {k: v for k, v in configs.json("vae/config.json").items() if not k.startswith("_")}
        parts.append(("vae", AutoencoderKL.from_config({**vae_config, **(TINY_VAE if tiny else {})})))
        text_config = {k: v for k, v in configs.json("text_encoder/config.json").items() if k != "architectures"}
        parts.append(("text_encoder", CLIPTextModel(CLIPTextConfig(**{**text_config, **(TINY_TEXT if tiny else {})}))))
    for name, model in parts:
        model.to(dtype).save_pretrained(folder / name, safe_serialization=True)
    clip_tokenizer(configs.json("tokenizer/tokenizer_config.json")).save_pretrained(folder / "tokenizer")
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(configs.json("scheduler/scheduler_config.json")))
    (folder / "model_index.json").write_text(json.dumps(configs.json("model_index.json")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true", help="toy size on the CPU in float32 (checks the script)")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)

    from diffusers import StableDiffusionPipeline

    from sdserve_backend.pipelines import GenerationRequest, GenerationSettings, TextToImagePipeline, load_components
    from sdserve_backend.single_file_export import export

    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.float16
    size = 128 if args.tiny else 512
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"when": datetime.now(timezone.utc).isoformat(), "tiny": args.tiny, "steps": args.steps,
                               "size": size, "dtype": str(dtype), "device": torch.cuda.get_device_name(0) if not args.tiny else "cpu"}
    with tempfile.TemporaryDirectory(prefix="sdserve-single-file-") as scratch:
        folder, checkpoint = Path(scratch) / "model", Path(scratch) / "model.safetensors"
        write_random_model(folder, args.tiny, dtype)
        export(folder, checkpoint, layout="sd15")
        results["checkpoint_bytes"] = checkpoint.stat().st_size

        # 1. sdserve: the checkpoint alone
        started = time.perf_counter()
        components = load_components(checkpoint, device, dtype)
        results["sdserve_load_s"] = round(time.perf_counter() - started, 2)
        pipeline = TextToImagePipeline(components)
        [ours] = pipeline([GenerationRequest(prompts=[PROMPT], seed=SEED)], GenerationSettings(size, size, args.steps, 7.5, ""))
        del pipeline, components

        # 2. diffusers: the checkpoint with the folder as its config
        started = time.perf_counter()
        reference = StableDiffusionPipeline.from_single_file(
            str(checkpoint), config=str(folder), local_files_only=True, torch_dtype=dtype, safety_checker=None,
            requires_safety_checker=False).to(device)
        results["diffusers_load_s"] = round(time.perf_counter() - started, 2)
        reference.set_progress_bar_config(disable=True)
        images = reference([PROMPT], num_inference_steps=args.steps, guidance_scale=7.5, height=size, width=size,
                           generator=torch.Generator(device="cpu").manual_seed(SEED), output_type="np").images
        theirs = (images * 255).round().astype(np.uint8)

    results["psnr_db"] = psnr(ours, theirs)
    results["max_abs_diff"] = int(np.abs(ours.astype(np.int16) - theirs.astype(np.int16)).max())
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0 if results["psnr_db"] >= PSNR_FLOOR_DB else 1


if __name__ == "__main__":
    sys.exit(main())
