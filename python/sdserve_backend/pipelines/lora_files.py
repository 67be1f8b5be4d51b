"""Reading LoRA `.safetensors` files into low-rank pairs per layer of the model.

Two key layouts are read, for the UNet and the text encoder(s):
- Kohya / Automatic1111: `lora_unet_<layer with underscores>.lora_down.weight`, `.lora_up.weight`
  and `.alpha` (`lora_te_` / `lora_te1_` for the first text encoder, `lora_te2_` for SDXL's
  second); a layer's scale is alpha / rank (Hu et al. 2021, "LoRA", section 4.1).
- diffusers / PEFT: `unet.<layer>.lora_A.weight` and `.lora_B.weight` (`text_encoder.`,
  `text_encoder_2.`); without an alpha the scale is 1, as diffusers loads them.
Kohya's SDXL files name UNet blocks the original way (`input_blocks.4.1`); those are mapped to the
diffusers layer names with diffusers' own mapping. A layer is a `Linear` or a `Conv2d`: `down` is
[rank, in] (conv: [rank, in, kh, kw]) and `up` [out, rank] (conv: [out, rank, 1, 1]).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder",
                  "lora_te2_": "text_encoder_2"}
# Adapters that are not plain low-rank pairs (LyCORIS LoHa / LoKr, DoRA's magnitudes).
UNSUPPORTED_MARKERS = ("hada_w1", "lokr_w1", "dora_scale", "lora_mid")
KOHYA_KEY = re.compile(r"^(lora_unet_|lora_te1_|lora_te2_|lora_te_)(.+?)\.(lora_down\.weight|lora_up\.weight|alpha)$")
PEFT_KEY = re.compile(r"^(unet|text_encoder|text_encoder_2)\.(.+)\.(lora_A\.weight|lora_B\.weight|alpha)$")


@dataclass(frozen=True)
class LoraPair:
    """One layer's low-rank update: W + scale * up @ down."""

    down: torch.Tensor
    up: torch.Tensor
    scale: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


# component ("unet", "text_encoder", "text_encoder_2") -> layer path in that model -> pair
LoraLayers = dict[str, dict[str, LoraPair]]


def read_lora_file(path: Path, models: Mapping[str, torch.nn.Module | None]) -> LoraLayers:
    """The file's pairs, each matched to a `Linear` / `Conv2d` of `models` (by component name).

    Raises ValueError naming the key when the file is not a LoRA of these models: an unknown
    layout, a layer the model lacks, shapes that do not fit (a LoRA made for another base model).
    """
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path.name} is not a readable .safetensors file: {error}") from None
    for key in tensors:
        if any(marker in key for marker in UNSUPPORTED_MARKERS):
            raise ValueError(f"{path.name} is not a plain LoRA (key {key!r}: LoHa, LoKr, DoRA and LoCon mid weights "
                             "are not supported)")
    if tensors and all(KOHYA_KEY.match(key) for key in tensors):
        raw = _kohya_pairs(tensors, models.get("unet"))
    elif tensors and all(PEFT_KEY.match(key) for key in tensors):
        raw = _peft_pairs(tensors)
    else:
        odd = next((key for key in tensors if not KOHYA_KEY.match(key) and not PEFT_KEY.match(key)), None)
        raise ValueError(f"{path.name} is not a LoRA in the Kohya (lora_unet_..., lora_down/lora_up) or diffusers/PEFT "
                         f"(unet....lora_A/lora_B) layout" + (f": key {odd!r}" if odd else ": it holds no tensors"))
    layers: LoraLayers = {}
    for (component, flat_or_path), parts in raw.items():
        model = models.get(component)
        if model is None:
            raise ValueError(f"{path.name} has weights for {component}, which this model does not have")
        name, layer = _find_layer(model, flat_or_path, flattened=parts.get("flattened", False))
        if name is None or layer is None:
            raise ValueError(f"{path.name}: {component} has no layer {flat_or_path!r}; is this a LoRA for another model?")
        layers.setdefault(component, {})[name] = _pair(path.name, component, name, layer, parts)
    return layers


def _kohya_pairs(tensors: dict[str, torch.Tensor], unet: Any) -> dict[tuple[str, str], dict[str, Any]]:
    if unet is not None and any(key.startswith(("lora_unet_input_blocks", "lora_unet_middle_block",
                                                "lora_unet_output_blocks")) for key in tensors):
        # Kohya's SDXL names: the original model's blocks, mapped by diffusers' own table.
        from diffusers.loaders.lora_conversion_utils import _maybe_map_sgm_blocks_to_diffusers

        tensors = _maybe_map_sgm_blocks_to_diffusers(tensors, unet.config)
    pairs: dict[tuple[str, str], dict[str, Any]] = {}
    for key, tensor in tensors.items():
        match = KOHYA_KEY.match(key)
        assert match is not None
        prefix, layer, part = match.groups()
        entry = pairs.setdefault((KOHYA_PREFIXES[prefix], layer), {"flattened": True})
        entry[{"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}[part]] = tensor
    return pairs


def _peft_pairs(tensors: dict[str, torch.Tensor]) -> dict[tuple[str, str], dict[str, Any]]:
    pairs: dict[tuple[str, str], dict[str, Any]] = {}
    for key, tensor in tensors.items():
        match = PEFT_KEY.match(key)
        assert match is not None
        component, layer, part = match.groups()
        pairs.setdefault((component, layer), {})[{"lora_A.weight": "down", "lora_B.weight": "up", "alpha": "alpha"}[part]] = tensor
    return pairs


def _find_layer(model: torch.nn.Module, name: str, flattened: bool) -> tuple[str | None, torch.nn.Module | None]:
    """The model's Linear/Conv2d called `name`; Kohya writes the path with underscores, and names
    CLIP's layers under `text_model.` (which newer transformers' CLIPTextModel leaves out)."""
    layers = _layers(model)
    candidates = [name]
    candidates += [name.removeprefix("text_model_" if flattened else "text_model.")]
    candidates += [("text_model_" if flattened else "text_model.") + name]
    for candidate in candidates:
        found = layers.get(("flat", candidate) if flattened else ("path", candidate))
        if found is not None:
            return found
    return None, None


def _layers(model: torch.nn.Module) -> dict[tuple[str, str], tuple[str, torch.nn.Module]]:
    cached = getattr(model, "_sdserve_lora_layer_index", None)
    if cached is not None:
        return cached
    index: dict[tuple[str, str], tuple[str, torch.nn.Module]] = {}
    for path, module in model.named_modules():
        base = getattr(module, "base", None) if type(module).__name__ == "LoraSite" else module
        if isinstance(base, (torch.nn.Linear, torch.nn.Conv2d)):
            index[("path", path)] = (path, base)
            index[("flat", path.replace(".", "_"))] = (path, base)
    object.__setattr__(model, "_sdserve_lora_layer_index", index)
    return index


def _pair(file: str, component: str, name: str, layer: torch.nn.Module, parts: dict[str, Any]) -> LoraPair:
    if "down" not in parts or "up" not in parts:
        raise ValueError(f"{file}: {component} layer {name!r} lacks its {'down' if 'down' not in parts else 'up'} weight")
    down, up = parts["down"], parts["up"]
    weight = layer.weight
    # A 1x1 convolution and a Linear are the same map; files store either shape for either layer.
    if isinstance(layer, torch.nn.Conv2d) and weight.shape[2:] == (1, 1) and down.ndim == 2 and up.ndim == 2:
        down, up = down[:, :, None, None], up[:, :, None, None]
    elif isinstance(layer, torch.nn.Linear) and down.ndim == 4 and down.shape[2:] == (1, 1) and up.ndim == 4:
        down, up = down.flatten(1), up.flatten(1)
    rank = down.shape[0]
    if isinstance(layer, torch.nn.Linear):
        fits = down.ndim == 2 and up.ndim == 2 and down.shape[1] == weight.shape[1] and up.shape == (weight.shape[0], rank)
    else:
        fits = (down.ndim == 4 and up.ndim == 4 and down.shape[1] == weight.shape[1] and down.shape[2:] == weight.shape[2:]
                and up.shape == (weight.shape[0], rank, 1, 1))
    if not fits:
        raise ValueError(f"{file}: {component} layer {name!r} has weights {tuple(weight.shape)}, the LoRA's down/up are "
                         f"{tuple(down.shape)}/{tuple(up.shape)}; is this a LoRA for another model?")
    alpha = float(parts["alpha"].item()) if "alpha" in parts else float(rank)
    return LoraPair(down=down, up=up, scale=alpha / rank)
