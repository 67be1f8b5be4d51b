"""Writing a diffusers model as one `.safetensors` checkpoint in the original (CompVis /
Automatic1111) key layout: the form most checkpoints are shared in.

The tests use it to make tiny single-file checkpoints from the tiny models, the GPU bench to make a
full-size one from random weights. The inverse of what `pipelines.single_file` reads.

    python -m sdserve_backend.single_file_export --model DIR --out model.safetensors [--layout sd15|sd21|sdxl_base|sdxl_refiner]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from sdserve_backend.pipelines.single_file import CLIP_PREFIXES, OPEN_CLIP_PREFIXES

UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
OPEN_CLIP_NAMES = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                   "self_attn.out_proj": "attn.out_proj"}


def unet_to_original(state: dict[str, torch.Tensor], layers_per_block: int, up_attention: list[bool]) -> dict[str, torch.Tensor]:
    """A diffusers UNet2DConditionModel state dict in the original layout, without its prefix."""
    n = layers_per_block
    out: dict[str, torch.Tensor] = {}
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for key, value in state.items():
        parts = key.split(".")
        for width in (2, 1):
            head = ".".join(parts[:width])
            if head in fixed:
                out[f"{fixed[head]}.{'.'.join(parts[width:])}"] = value
                break
        else:
            head = ""
        if head:
            continue
        if parts[0] == "mid_block":
            index = 1 if parts[1] == "attentions" else 2 * int(parts[2])
            rest = parts[3:] if parts[1] == "attentions" else _resnet(parts[3:])
            out[f"middle_block.{index}.{'.'.join(rest)}"] = value
            continue
        block, kind = int(parts[1]), parts[2]
        if parts[0] == "down_blocks":
            if kind == "downsamplers":
                out[f"input_blocks.{(n + 1) * (block + 1)}.0.op.{'.'.join(parts[5:])}"] = value
                continue
            layer = (n + 1) * block + int(parts[3]) + 1
            target = "input_blocks"
        elif parts[0] == "up_blocks":
            if kind == "upsamplers":
                slot = 2 if up_attention[block] else 1
                out[f"output_blocks.{(n + 1) * block + n}.{slot}.conv.{'.'.join(parts[5:])}"] = value
                continue
            layer = (n + 1) * block + int(parts[3])
            target = "output_blocks"
        else:
            raise ValueError(f"unexpected UNet key {key}")
        if kind == "resnets":
            out[f"{target}.{layer}.0.{'.'.join(_resnet(parts[4:]))}"] = value
        else:
            out[f"{target}.{layer}.1.{'.'.join(parts[4:])}"] = value
    return out


def _resnet(parts: list[str]) -> list[str]:
    return [*UNET_RESNET.get(parts[0], parts[0]).split("."), *parts[1:]]


def vae_to_original(state: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL state dict in the original layout, without its prefix."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        side = parts[0]
        if side not in ("encoder", "decoder"):
            out[key] = value
            continue
        rest = ".".join(parts[1:]).replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        rest_parts = rest.split(".")
        if rest_parts[0] in ("down_blocks", "up_blocks"):
            level = int(rest_parts[1]) if side == "encoder" else levels - 1 - int(rest_parts[1])
            group = "down" if side == "encoder" else "up"
            if rest_parts[2] == "resnets":
                rest = f"{group}.{level}.block.{rest_parts[3]}.{'.'.join(rest_parts[4:])}"
            else:
                sampler = "downsample" if side == "encoder" else "upsample"
                rest = f"{group}.{level}.{sampler}.{'.'.join(rest_parts[4:])}"
        elif rest_parts[0] == "mid_block":
            if rest_parts[1] == "resnets":
                rest = f"mid.block_{int(rest_parts[2]) + 1}.{'.'.join(rest_parts[3:])}"
            else:
                inner = ".".join(rest_parts[3:])
                for new, old in VAE_ATTENTION.items():
                    if inner.startswith(new + "."):
                        inner = old + inner[len(new):]
                        break
                rest = f"mid.attn_1.{inner}"
                if inner.endswith("weight") and value.ndim == 2:
                    value = value[:, :, None, None]
        out[f"{side}.{rest}"] = value
    return out


def clip_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CLIPTextModel in the transformers layout, as the original checkpoints keep CLIP ViT-L."""
    return {f"text_model.{key.removeprefix('text_model.')}": value for key, value in state.items()
            if not key.endswith("position_ids")}


def open_clip_to_original(state: dict[str, torch.Tensor], extra_layer: bool = False) -> dict[str, torch.Tensor]:
    """A CLIP text model in OpenCLIP's layout (fused attention input projection). `extra_layer`: SD 2.x
    checkpoints hold one layer more than their diffusers encoder uses (a copy of the last one here)."""
    state = {key.removeprefix("text_model."): value for key, value in state.items() if not key.endswith("position_ids")}
    out: dict[str, torch.Tensor] = {
        "token_embedding.weight": state["embeddings.token_embedding.weight"],
        "positional_embedding": state["embeddings.position_embedding.weight"],
        "ln_final.weight": state["final_layer_norm.weight"],
        "ln_final.bias": state["final_layer_norm.bias"],
    }
    hidden = out["token_embedding.weight"].shape[1]
    out["text_projection"] = (state["text_projection.weight"].T.contiguous() if "text_projection.weight" in state
                              else torch.eye(hidden))
    layers = sorted({int(key.split(".")[2]) for key in state if key.startswith("encoder.layers.")})
    copies = [(layer, layer) for layer in layers] + ([(layers[-1], layers[-1] + 1)] if extra_layer else [])
    for layer, index in copies:
        prefix, target = f"encoder.layers.{layer}.", f"transformer.resblocks.{index}."
        for kind in ("weight", "bias"):
            out[f"{target}attn.in_proj_{kind}"] = torch.cat(
                [state[f"{prefix}self_attn.{name}_proj.{kind}"] for name in ("q", "k", "v")]).contiguous()
        for key, value in state.items():
            if key.startswith(prefix) and not any(f"self_attn.{name}_proj" in key for name in ("q", "k", "v")):
                rest = key[len(prefix):]
                for new, old in OPEN_CLIP_NAMES.items():
                    rest = rest.replace(new, old)
                out[target + rest] = value.clone()
    return out


def export(model_dir: Path, out_file: Path, layout: str | None = None, with_text_encoders: bool = True,
           with_vae: bool = True) -> Path:
    """Write the diffusers model at `model_dir` to `out_file` in the original layout of `layout`
    (told from the model when None)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    model_dir = Path(model_dir)
    index = json.loads((model_dir / "model_index.json").read_text())
    has = {name: isinstance(index.get(name), list) and index[name][1] is not None for name in ("text_encoder", "text_encoder_2")}
    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", local_files_only=True)
    if layout is None:
        if has["text_encoder_2"]:
            layout = "sdxl_base" if has["text_encoder"] else "sdxl_refiner"
        else:
            layout = "sd21" if unet.config.use_linear_projection else "sd15"
    attention = [kind.startswith("CrossAttn") for kind in unet.config.up_block_types]
    tensors = {f"model.diffusion_model.{key}": value
               for key, value in unet_to_original(unet.state_dict(), unet.config.layers_per_block, attention).items()}
    if with_vae:
        vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae", local_files_only=True)
        levels = len(vae.config.block_out_channels)
        tensors.update({f"first_stage_model.{key}": value for key, value in vae_to_original(vae.state_dict(), levels).items()})
    if with_text_encoders:
        if layout in CLIP_PREFIXES:
            encoder = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder", local_files_only=True)
            tensors.update({CLIP_PREFIXES[layout] + key: value for key, value in clip_to_original(encoder.state_dict()).items()})
        if layout in OPEN_CLIP_PREFIXES:
            name = "text_encoder" if layout == "sd21" else "text_encoder_2"
            model_class = CLIPTextModel if layout == "sd21" else CLIPTextModelWithProjection
            encoder = model_class.from_pretrained(model_dir, subfolder=name, local_files_only=True)
            converted = open_clip_to_original(encoder.state_dict(), extra_layer=layout == "sd21")
            tensors.update({OPEN_CLIP_PREFIXES[layout] + key: value for key, value in converted.items()})
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(out_file))
    return out_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a diffusers model as one checkpoint in the original layout.")
    parser.add_argument("--model", type=Path, required=True, help="the diffusers model folder")
    parser.add_argument("--out", type=Path, required=True, help="the .safetensors file to write")
    parser.add_argument("--layout", choices=("sd15", "sd21", "sdxl_base", "sdxl_refiner"), default=None)
    parser.add_argument("--no-text-encoders", action="store_true")
    parser.add_argument("--no-vae", action="store_true")
    args = parser.parse_args(argv)
    export(args.model, args.out, args.layout, not args.no_text_encoders, not args.no_vae)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
