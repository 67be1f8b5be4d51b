"""Tiny models for the single-file checkpoint tests: a diffusers folder and the same weights as one
checkpoint in the original layout.

A checkpoint shows every size in its tensors' shapes but not what the shipped configs supply
(attention heads, the CLIP tokenizer and its 49408-token vocabulary, special token ids). So the
folder is the built-in tiny model with those set as the shipped configs set them: its UNet and VAE
weights unchanged, its text encoders drawn again at the full vocabulary size, the CLIP tokenizer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from sdserve_backend.pipelines.single_file import ConfigFolder, clip_tokenizer
from sdserve_backend.single_file_export import export

ARCHITECTURE = {"sd": "sd15", "sd-inpaint": "sd15", "sd21": "sd21", "sdxl": "sdxl_base", "sdxl_refiner": "sdxl_refiner"}
# What the published configs say about text encoder attention: 64-wide heads.
TEXT_HEAD_WIDTH = 64


def published_rules_folder(tiny_dir: Path, out_dir: Path, variant: str, seed: int = 0) -> Path:
    """A copy of the tiny model at `tiny_dir` that follows the shipped configs of its architecture."""
    configs = ConfigFolder(ARCHITECTURE[variant])
    shutil.copytree(tiny_dir, out_dir, ignore=shutil.ignore_patterns("loras", "*.md", "sdserve_tiny_model.json"))

    # 1. UNet attention heads as the published config counts them
    unet_config_path = out_dir / "unet" / "config.json"
    unet_config = json.loads(unet_config_path.read_text())
    published = configs.json("unet/config.json")
    heads = published["attention_head_dim"]
    if isinstance(heads, list):
        width = published["block_out_channels"][0] // heads[0]
        heads = [max(1, channels // width) for channels in unet_config["block_out_channels"]]
    unet_config["attention_head_dim"] = heads
    unet_config_path.write_text(json.dumps(unet_config, indent=2) + "\n")

    # 2. Text encoders at CLIP's vocabulary size, with the published special token ids
    for offset, (name, model_class) in enumerate((("text_encoder", CLIPTextModel),
                                                  ("text_encoder_2", CLIPTextModelWithProjection))):
        if not (out_dir / name).is_dir():
            continue
        tiny_config = json.loads((out_dir / name / "config.json").read_text())
        published_text = configs.json(f"{name}/config.json")
        fields = {key: tiny_config[key] for key in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                    "max_position_embeddings", "hidden_act", "projection_dim")}
        fields.update(vocab_size=published_text["vocab_size"], num_attention_heads=max(1, fields["hidden_size"] // TEXT_HEAD_WIDTH),
                      bos_token_id=published_text["bos_token_id"], eos_token_id=published_text["eos_token_id"],
                      pad_token_id=published_text["pad_token_id"])
        torch.manual_seed(seed + 10 + offset)
        shutil.rmtree(out_dir / name)
        model_class(CLIPTextConfig(**fields)).save_pretrained(out_dir / name, safe_serialization=True)

    # 3. CLIP's tokenizers, the shipped scheduler
    for name in ("tokenizer", "tokenizer_2"):
        if (out_dir / name).is_dir():
            shutil.rmtree(out_dir / name)
            clip_tokenizer(configs.json(f"{name}/tokenizer_config.json")).save_pretrained(out_dir / name)
    scheduler = configs.json("scheduler/scheduler_config.json")
    (out_dir / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2) + "\n")
    return out_dir


def single_file(folder: Path, out_file: Path, **parts: bool) -> Path:
    """The diffusers model at `folder` as one checkpoint in the original layout."""
    return export(folder, out_file, **parts)
