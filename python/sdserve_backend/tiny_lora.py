"""Tiny LoRA files for the built-in tiny models, in both key layouts LoRAs come in.

Random low-rank pairs for the attention, feed-forward and projection layers of the UNet and of
every text encoder, written as a model's `loras/` folder holds them:
- `tiny_kohya.safetensors`: Kohya / Automatic1111 keys (`lora_unet_...lora_down.weight`,
  `lora_te_text_model_...` (SDXL: `lora_te1_`, `lora_te2_`), `.alpha` = rank / 2, so scale 0.5);
- `tiny_peft.safetensors`: diffusers / PEFT keys (`unet....lora_A.weight`, `text_encoder....`),
  no alpha (scale 1);
- `tiny_unet_peft.safetensors`: diffusers / PEFT keys for the UNet only.
Like the tiny models, their images mean nothing; they change them visibly, which is what tests need.

    python -m sdserve_backend.tiny_lora --model DIR [--out DIR/loras]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

RANK = 4
KOHYA_ALPHA = RANK / 2
UNET_LAYERS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
TEXT_LAYERS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
FILES = {"tiny_kohya": ("kohya", 1, True), "tiny_peft": ("peft", 2, True), "tiny_unet_peft": ("peft", 3, False)}


def make_tiny_loras(model_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """Write the tiny LoRA files for the tiny model in `model_dir` (default: its `loras/`)."""
    # Imported here: writing a model does not need the pipeline classes.
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    model_dir = Path(model_dir)
    out_dir = Path(out_dir) if out_dir is not None else model_dir / "loras"
    out_dir.mkdir(parents=True, exist_ok=True)
    models: dict[str, torch.nn.Module] = {"unet": UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")}
    models["text_encoder"] = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder")
    if (model_dir / "text_encoder_2").is_dir():
        models["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(model_dir, subfolder="text_encoder_2")
    written = []
    for name, (layout, seed, with_text) in FILES.items():
        generator = torch.Generator().manual_seed(seed)
        tensors: dict[str, torch.Tensor] = {}
        for component, model in models.items():
            if component != "unet" and not with_text:
                continue
            suffixes = UNET_LAYERS if component == "unet" else TEXT_LAYERS
            for path, layer in model.named_modules():
                if not isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)) or not path.endswith(suffixes):
                    continue
                weight = layer.weight
                down = torch.randn((RANK, weight.shape[1], *weight.shape[2:]), generator=generator) * 0.2
                up = torch.randn((weight.shape[0], RANK, *([1] * (weight.ndim - 2))), generator=generator) * 0.2
                tensors.update(_keys(layout, component, path, down, up, len(models) > 2))
        target = out_dir / f"{name}.safetensors"
        save_file(tensors, str(target))
        written.append(target)
    return written


# The UNet layers an LCM-LoRA adapts (the attention and feed-forward layers, and also the resnets'
# convolutions and time projections and the down/upsamplers), after diffusers' LCM-LoRA training script.
LCM_LORA_LAYERS = UNET_LAYERS + ("conv1", "conv2", "conv_shortcut", "time_emb_proj", "downsamplers.0.conv",
                                 "upsamplers.0.conv")


def make_tiny_lcm_lora(model_dir: Path, target: Path, seed: int = 4) -> Path:
    """Write a LoRA shaped like the published LCM-LoRAs for the tiny model in `model_dir`: the UNet
    only, Kohya keys, 3x3 convolutions included. Its weights are random like the other tiny LoRAs'."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for path, layer in unet.named_modules():
        if not isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)) or not path.endswith(LCM_LORA_LAYERS):
            continue
        weight = layer.weight
        down = torch.randn((RANK, weight.shape[1], *weight.shape[2:]), generator=generator) * 0.1
        up = torch.randn((weight.shape[0], RANK, *([1] * (weight.ndim - 2))), generator=generator) * 0.1
        tensors.update(_keys("kohya", "unet", path, down, up, False))
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target))
    return Path(target)


def _keys(layout: str, component: str, path: str, down: torch.Tensor, up: torch.Tensor, sdxl: bool) -> dict[str, torch.Tensor]:
    if component != "unet" and not path.startswith("text_model."):
        # The layer names published files use (transformers' CLIPTextModel before version 5).
        path = f"text_model.{path}"
    if layout == "peft":
        return {f"{component}.{path}.lora_A.weight": down, f"{component}.{path}.lora_B.weight": up}
    prefix = {"unet": "lora_unet", "text_encoder": "lora_te1" if sdxl else "lora_te", "text_encoder_2": "lora_te2"}[component]
    key = f"{prefix}_{path.replace('.', '_')}"
    return {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(KOHYA_ALPHA)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write tiny LoRA files for a tiny Stable Diffusion model.")
    parser.add_argument("--model", type=Path, required=True, help="the tiny model's folder")
    parser.add_argument("--out", type=Path, default=None, help="where to write them (default: MODEL/loras)")
    args = parser.parse_args(argv)
    for path in make_tiny_loras(args.model, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
