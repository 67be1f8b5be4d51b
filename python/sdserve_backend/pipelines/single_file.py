"""Loading a single-file checkpoint (the original CompVis / Automatic1111 key layout) offline.

The component configs of each published architecture ship in `checkpoint_configs/` (written from
the published configs), and CLIP's tokenizer is built from the merges kept there. The architecture
is told from the checkpoint's keys; every size the weights show (channels, layers, widths, input
channels of an inpainting UNet, ...) is read from their shapes, everything else (attention head
width, schedulers, scaling factors, activations) comes from the shipped configs:

| architecture   | told by                                                                     |
|----------------|-----------------------------------------------------------------------------|
| `sd15`         | CLIP ViT-L text encoder, or a UNet with convolutional attention projections  |
| `sd21`         | OpenCLIP ViT-H text encoder, or linear projections; `v_prediction`, 768      |
| `sd21_base`    | as `sd21`, with the model parameter `prediction_type: epsilon`; 512          |
| `sdxl_base`    | UNet with SDXL's size conditioning and both text encoders (or 2048 wide)     |
| `sdxl_refiner` | UNet with SDXL's size conditioning and OpenCLIP bigG only (or 1280 wide)     |

The conversion of the weights themselves is diffusers' (`diffusers.loaders.single_file_utils`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, SchedulerMixin, UNet2DConditionModel
from diffusers.loaders import single_file_utils as ldm
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from sdserve_backend.config_errors import InvalidParameter, UnusableModelFile
from sdserve_backend.quoting import quoted

CONFIGS_DIR = Path(__file__).resolve().parent / "checkpoint_configs"
MERGES_FILE = CONFIGS_DIR / "clip_merges.txt"
ARCHITECTURES = ("sd15", "sd21", "sd21_base", "sdxl_base", "sdxl_refiner")
PREDICTION_TYPES = ("epsilon", "v_prediction")
PARAMETER_HINT = 'see README "Single-file checkpoints"'

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIXES = ("first_stage_model.", "vae.")
# Where each architecture keeps its text encoders: (CLIP ViT-L in the transformers layout,
# OpenCLIP in its own layout).
CLIP_PREFIXES = {"sd15": "cond_stage_model.transformer.", "sdxl_base": "conditioner.embedders.0.transformer."}
OPEN_CLIP_PREFIXES = {
    "sd21": "cond_stage_model.model.",
    "sdxl_base": "conditioner.embedders.1.model.",
    "sdxl_refiner": "conditioner.embedders.0.model.",
}
# SDXL's size conditioning: original size, crop corner and target size (6 numbers); the refiner
# swaps the target size for an aesthetic score (5).
TIME_IDS = {"sdxl_base": 6, "sdxl_refiner": 5}

Shapes = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class CheckpointOptions:
    """The model parameters that complete or adjust a checkpoint (paths already confined by the core)."""

    # A separate VAE: a .safetensors in the original layout (with or without its prefix) or a
    # diffusers AutoencoderKL folder. None: the checkpoint's own.
    vae: Path | None = None
    # Text encoders for a checkpoint that has none: a .safetensors in the original layout of the
    # same architecture, or a diffusers model folder. None: the checkpoint's own.
    text_encoders: Path | None = None
    # "epsilon" or "v_prediction"; None: the architecture's published default.
    prediction_type: str | None = None


@dataclass(frozen=True)
class CheckpointSources(CheckpointOptions):
    """A single-file checkpoint and its options."""

    checkpoint: Path = Path()


def load_single_file(checkpoint: Path, options: CheckpointOptions, dtype: torch.dtype) -> dict[str, Any]:
    """The components of a single-file checkpoint, on the CPU in `dtype` (see `components._place`)."""
    sources = CheckpointSources(checkpoint=Path(checkpoint), vae=options.vae, text_encoders=options.text_encoders,
                                prediction_type=options.prediction_type)
    # 1. Tell the architecture from the keys and shapes, without reading any weights
    shapes = _with_text_model_prefix(read_shapes(sources.checkpoint))
    text_shapes = _with_text_model_prefix(read_shapes(sources.text_encoders)) if _is_file(sources.text_encoders) else {}
    architecture = detect_architecture({**text_shapes, **shapes}, sources.prediction_type)
    configs = ConfigFolder(architecture)

    # 2. The UNet
    weights = _with_text_model_prefix(load_file(str(sources.checkpoint)))
    unet_config = unet_config_from(shapes, configs.json("unet/config.json"), architecture, {**text_shapes, **shapes})
    unet = _build(UNet2DConditionModel, unet_config)
    _fill(unet, ldm.convert_ldm_unet_checkpoint(weights, dict(unet.config)), f"{sources.checkpoint}: the UNet", dtype)

    # 3. The VAE: its own file, else the checkpoint's
    vae = _load_vae(sources, shapes, weights, configs, dtype)

    # 4. The text encoders and tokenizers
    encoders = _load_text_encoders(sources, architecture, configs, {**text_shapes, **shapes}, weights, dtype)
    del weights

    # 5. The scheduler
    model_index = configs.json("model_index.json")
    scheduler_config = configs.json("scheduler/scheduler_config.json")
    if sources.prediction_type is not None:
        scheduler_config["prediction_type"] = sources.prediction_type
    scheduler_class = _scheduler_class(scheduler_config.pop("_class_name"))
    parts = {
        "unet": unet,
        "vae": vae,
        **encoders,
        "scheduler_class": scheduler_class,
        "scheduler_config": dict(scheduler_class.from_config(scheduler_config).config),
        "force_zeros_for_empty_prompt": bool(model_index.get("force_zeros_for_empty_prompt", False)),
        "requires_aesthetics_score": bool(model_index.get("requires_aesthetics_score", False)),
    }
    return parts


# ---------------------------------------------------------------------------------------------
# Telling the architecture


def read_shapes(path: Path) -> Shapes:
    """Every tensor's name and shape, read from the safetensors header only."""
    try:
        with safe_open(str(path), framework="pt") as checkpoint:
            return {key: tuple(checkpoint.get_slice(key).get_shape()) for key in checkpoint.keys()}
    except (SafetensorError, PermissionError) as error:
        raise UnusableModelFile(f"{path.name} is not a readable .safetensors checkpoint: {error}") from error
    # Any other OSError (no file descriptor or memory left, an I/O error) is the server's, not the file's.


def detect_architecture(shapes: Shapes, prediction_type: str | None = None) -> str:
    """One of ARCHITECTURES; ValueError naming what is missing for a layout it does not know."""
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise InvalidParameter(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {quoted(prediction_type)}")
    if f"{UNET_PREFIX}input_blocks.0.0.weight" not in shapes:
        hint = (" (it looks like a diffusers UNet file: serve its diffusers folder instead)"
                if "conv_in.weight" in shapes else "")
        raise UnusableModelFile(
            f"not a Stable Diffusion checkpoint in the original single-file layout: it has no "
            f"'{UNET_PREFIX}input_blocks.0.0.weight'{hint}; known: SD 1.x, SD 2.x, SDXL base and refiner")
    if f"{UNET_PREFIX}label_emb.0.0.weight" in shapes:
        if _has_prefix(shapes, OPEN_CLIP_PREFIXES["sdxl_refiner"]):
            return "sdxl_refiner"
        if _has_prefix(shapes, OPEN_CLIP_PREFIXES["sdxl_base"]):
            return "sdxl_base"
        width = _cross_attention_dim(shapes)
        by_width = {2048: "sdxl_base", 1280: "sdxl_refiner"}
        if width in by_width:
            return by_width[width]
        raise UnusableModelFile(
            f"an SDXL-like checkpoint without text encoders and a {width}-wide cross-attention: it is neither "
            "SDXL base (2048) nor the refiner (1280)")
    if f"{UNET_PREFIX}label_emb.0.weight" in shapes or f"{UNET_PREFIX}label_emb.weight" in shapes:
        raise UnusableModelFile("a UNet with class conditioning (label_emb), such as an upscaler, is not a known layout")
    if _has_prefix(shapes, CLIP_PREFIXES["sd15"]):
        is_sd2 = False
    elif _has_prefix(shapes, OPEN_CLIP_PREFIXES["sd21"]):
        is_sd2 = True
    else:
        # No text encoder to tell by: SD 2.x's UNet projects into its attention linearly.
        is_sd2 = len(shapes.get(_first_key(shapes, ".proj_in.weight"), ())) == 2
    if not is_sd2:
        if prediction_type == "v_prediction":
            raise InvalidParameter("prediction_type 'v_prediction' needs an SD 2.x checkpoint; this one is SD 1.x")
        return "sd15"
    return "sd21_base" if prediction_type == "epsilon" else "sd21"


def unet_config_from(shapes: Shapes, published: dict[str, Any], architecture: str,
                     all_shapes: Shapes | None = None) -> dict[str, Any]:
    """The published UNet config with every size the checkpoint's UNet shows taken from it."""
    all_shapes = all_shapes if all_shapes is not None else shapes

    def shape(name: str) -> tuple[int, ...]:
        if UNET_PREFIX + name not in shapes:
            raise UnusableModelFile(f"the checkpoint's UNet has no '{UNET_PREFIX}{name}': not a known layout")
        return shapes[UNET_PREFIX + name]

    def transformer_depth(block: str) -> int:
        pattern = re.compile(re.escape(f"{UNET_PREFIX}{block}.1.transformer_blocks.") + r"(\d+)\.")
        return len({match.group(1) for key in shapes if (match := pattern.match(key))})

    downsamplers = sorted(
        int(match.group(1)) for key in shapes if (match := re.fullmatch(re.escape(UNET_PREFIX) + r"input_blocks\.(\d+)\.0\.op\.weight", key)))
    if not downsamplers:
        raise UnusableModelFile("the checkpoint's UNet has no downsampling blocks: not a known layout")
    layers_per_block = downsamplers[0] - 1
    levels = len(downsamplers) + 1
    channels, attention, depths = [], [], []
    for level in range(levels):
        first = f"input_blocks.{(layers_per_block + 1) * level + 1}"
        channels.append(shape(f"{first}.0.out_layers.3.weight")[0])
        attention.append(f"{UNET_PREFIX}{first}.1.proj_in.weight" in shapes)
        depths.append(transformer_depth(first))
    mid_depth = transformer_depth("middle_block")
    # A level without attention has no depth of its own; diffusers reads the mid block's from the last level.
    depths = [depth if has else mid_depth for depth, has in zip(depths, attention)]

    config = dict(published)
    config.update(
        in_channels=shape("input_blocks.0.0.weight")[1],
        out_channels=shape("out.2.weight")[0],
        block_out_channels=channels,
        layers_per_block=layers_per_block,
        down_block_types=["CrossAttnDownBlock2D" if has else "DownBlock2D" for has in attention],
        up_block_types=["CrossAttnUpBlock2D" if has else "UpBlock2D" for has in reversed(attention)],
        cross_attention_dim=_cross_attention_dim(shapes),
        use_linear_projection=len(shapes[_first_key(shapes, ".proj_in.weight")]) == 2,
        norm_num_groups=math.gcd(int(published.get("norm_num_groups", 32)), *channels),
        attention_head_dim=_attention_heads(published, channels),
    )
    if any(depth != 1 for depth in depths) or "transformer_layers_per_block" in published:
        config["transformer_layers_per_block"] = depths
    if architecture in TIME_IDS:
        class_input = shape("label_emb.0.0.weight")[1]
        pooled = _pooled_width(all_shapes, architecture, published)
        config["projection_class_embeddings_input_dim"] = class_input
        config["addition_time_embed_dim"] = (class_input - pooled) // TIME_IDS[architecture]
    return config


def vae_config_from(shapes: Shapes, published: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The published VAE config with the sizes of the checkpoint's VAE (keys under `prefix`)."""
    pattern = re.compile(re.escape(f"{prefix}encoder.down.") + r"(\d+)\.block\.(\d+)\.conv1\.weight")
    blocks = [(int(m.group(1)), int(m.group(2))) for key in shapes if (m := pattern.fullmatch(key))]
    if not blocks or f"{prefix}decoder.conv_in.weight" not in shapes:
        raise UnusableModelFile(f"no VAE in the original layout under '{prefix}'")
    levels = max(level for level, _ in blocks) + 1
    channels = [shapes[f"{prefix}encoder.down.{level}.block.0.conv1.weight"][0] for level in range(levels)]
    config = dict(published)
    config.update(
        in_channels=shapes[f"{prefix}encoder.conv_in.weight"][1],
        out_channels=shapes[f"{prefix}decoder.conv_out.weight"][0],
        latent_channels=shapes[f"{prefix}decoder.conv_in.weight"][1],
        block_out_channels=channels,
        layers_per_block=max(block for _, block in blocks) + 1,
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
        norm_num_groups=math.gcd(int(published.get("norm_num_groups", 32)), *channels),
    )
    return config


def text_config_from(shapes: Shapes, published: dict[str, Any], prefix: str, open_clip: bool,
                     drop_last_layer: bool = False) -> dict[str, Any]:
    """The published CLIP text config with the sizes of the checkpoint's encoder under `prefix`."""
    if open_clip:
        tokens, positions = f"{prefix}token_embedding.weight", f"{prefix}positional_embedding"
        layer_pattern, fc1 = r"transformer\.resblocks\.(\d+)\.", f"{prefix}transformer.resblocks.0.mlp.c_fc.weight"
    else:
        tokens = f"{prefix}text_model.embeddings.token_embedding.weight"
        positions = f"{prefix}text_model.embeddings.position_embedding.weight"
        layer_pattern, fc1 = r"text_model\.encoder\.layers\.(\d+)\.", f"{prefix}text_model.encoder.layers.0.mlp.fc1.weight"
    pattern = re.compile(re.escape(prefix) + layer_pattern)
    layers = {match.group(1) for key in shapes if (match := pattern.match(key))}
    vocab_size, hidden = shapes[tokens]
    head_width = int(published["hidden_size"]) // int(published["num_attention_heads"])
    config = dict(published)
    config.update(
        vocab_size=vocab_size,
        hidden_size=hidden,
        max_position_embeddings=shapes[positions][0],
        intermediate_size=shapes[fc1][0],
        # SD 2.x conditions on the penultimate layer, so its published encoder leaves the last one out.
        num_hidden_layers=len(layers) - (1 if drop_last_layer else 0),
        num_attention_heads=max(1, hidden // head_width),
    )
    if open_clip and f"{prefix}text_projection" in shapes:
        config["projection_dim"] = shapes[f"{prefix}text_projection"][1]
    return config


# ---------------------------------------------------------------------------------------------
# Tokenizer


@lru_cache(maxsize=1)
def clip_vocabulary() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """CLIP's vocabulary and merges: the 256 byte symbols, each as a word end, one token per merge, then
    the start and end of text. Byte symbols are ordered as byte-level BPE lists them: printable bytes first."""
    lines = MERGES_FILE.read_text(encoding="utf-8").splitlines()[1:]
    merges = tuple((left, right) for left, right in (line.split(" ") for line in lines if line))
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    symbols = [chr(byte) for byte in printable]
    symbols += [chr(256 + index) for index, _ in enumerate(byte for byte in range(256) if byte not in printable)]
    tokens = symbols + [symbol + "</w>" for symbol in symbols] + [left + right for left, right in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def clip_tokenizer(tokenizer_config: Mapping[str, Any]) -> CLIPTokenizer:
    """CLIP's tokenizer with `tokenizer_config`'s special tokens (SD 2.x / SDXL's second one pads with "!")."""
    vocab, merges = clip_vocabulary()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        bos_token=tokenizer_config["bos_token"],
        eos_token=tokenizer_config["eos_token"],
        unk_token=tokenizer_config["unk_token"],
        pad_token=tokenizer_config["pad_token"],
        model_max_length=int(tokenizer_config["model_max_length"]),
    )


# ---------------------------------------------------------------------------------------------
# Components


class ConfigFolder:
    """One architecture's shipped configs."""

    def __init__(self, architecture: str) -> None:
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {quoted(architecture)}")
        self.architecture = architecture
        self.folder = CONFIGS_DIR / architecture

    def json(self, name: str) -> dict[str, Any]:
        return dict(json.loads((self.folder / name).read_text()))

    def has(self, component: str) -> bool:
        entry = self.json("model_index.json").get(component)
        return isinstance(entry, list) and len(entry) == 2 and entry[1] is not None


def _load_vae(sources: CheckpointSources, shapes: Shapes, weights: dict[str, torch.Tensor],
              configs: ConfigFolder, dtype: torch.dtype) -> AutoencoderKL:
    published = configs.json("vae/config.json")
    if sources.vae is not None and sources.vae.is_dir():
        return AutoencoderKL.from_pretrained(sources.vae, local_files_only=True, torch_dtype=dtype)
    if sources.vae is not None:
        vae_shapes = read_shapes(sources.vae)
        prefix = next((p for p in VAE_PREFIXES if _has_prefix(vae_shapes, p)), "")
        if f"{prefix}encoder.down_blocks.0.resnets.0.conv1.weight" in vae_shapes:
            raise UnusableModelFile(f"vae_weights {sources.vae} is a diffusers VAE file: name its folder (with config.json) instead")
        try:
            config = vae_config_from(vae_shapes, published, prefix)
        except ValueError as error:
            raise UnusableModelFile(f"vae_weights {sources.vae}: {error}") from None
        vae_weights = load_file(str(sources.vae))
        vae_weights = {f"first_stage_model.{key[len(prefix):]}": value for key, value in vae_weights.items()
                       if key.startswith(prefix)}
        where = f"vae_weights {sources.vae}"
    else:
        prefix = next((p for p in VAE_PREFIXES if _has_prefix(shapes, p)), None)
        if prefix is None:
            raise UnusableModelFile(f"{sources.checkpoint} holds no VAE; give one with the model parameter vae_weights "
                             f"(a .safetensors VAE or a diffusers VAE folder); {PARAMETER_HINT}")
        config = vae_config_from(shapes, published, prefix)
        vae_weights, where = weights, f"{sources.checkpoint}: the VAE"
    vae = _build(AutoencoderKL, config)
    _fill(vae, ldm.convert_ldm_vae_checkpoint(vae_weights, dict(vae.config)), where, dtype)
    return vae


def _load_text_encoders(sources: CheckpointSources, architecture: str, configs: ConfigFolder, shapes: Shapes,
                        weights: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, Any]:
    family = "sd21" if architecture.startswith("sd21") else architecture
    tokenizer_names = [name for name in ("tokenizer", "tokenizer_2") if configs.has(name)]
    tokenizers = {name: clip_tokenizer(configs.json(f"{name}/tokenizer_config.json")) for name in tokenizer_names}
    parts: dict[str, Any] = {"tokenizer": None, "text_encoder": None, "tokenizer_2": None, "text_encoder_2": None,
                             **tokenizers}
    if sources.text_encoders is not None and sources.text_encoders.is_dir():
        for name, model_class in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
            if configs.has(name):
                parts[name] = model_class.from_pretrained(sources.text_encoders, subfolder=name, local_files_only=True,
                                                          torch_dtype=dtype)
                tokenizer_name = name.replace("text_encoder", "tokenizer")
                parts[tokenizer_name] = CLIPTokenizer.from_pretrained(sources.text_encoders, subfolder=tokenizer_name,
                                                                      local_files_only=True)
        return parts

    if sources.text_encoders is not None:
        extra = _with_text_model_prefix(load_file(str(sources.text_encoders)))
        weights = {**extra, **weights}
    where = f"{sources.checkpoint}" + (f" and text_encoder_weights {sources.text_encoders}" if sources.text_encoders else "")
    wanted = []
    if family in CLIP_PREFIXES:
        wanted.append(("text_encoder", CLIP_PREFIXES[family], False))
    if family in OPEN_CLIP_PREFIXES:
        wanted.append(("text_encoder_2" if family.startswith("sdxl") else "text_encoder", OPEN_CLIP_PREFIXES[family], True))
    missing = [prefix for _, prefix, _ in wanted if not _has_prefix(shapes, prefix)]
    if missing:
        raise UnusableModelFile(
            f"{where} holds no text encoder under {', '.join(repr(p) for p in missing)} ({architecture}); give them "
            "with the model parameter text_encoder_weights (a .safetensors checkpoint of the same architecture "
            f"that has them, or a diffusers model folder); {PARAMETER_HINT}")
    for name, prefix, open_clip in wanted:
        published = configs.json(f"{name}/config.json")
        drop_last = open_clip and family == "sd21"
        try:
            config = text_config_from(shapes, published, prefix, open_clip, drop_last_layer=drop_last)
        except KeyError as error:
            raise UnusableModelFile(f"{where}: the text encoder under {prefix!r} has no {error}: not a known layout") from None
        model_class = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
        with init_empty_weights():
            model = model_class(CLIPTextConfig(**{k: v for k, v in config.items() if k != "architectures"}))
        if open_clip:
            own = {key: value for key, value in weights.items() if key.startswith(prefix)}
            if drop_last:
                last = f"{prefix}transformer.resblocks.{config['num_hidden_layers']}."
                own = {key: value for key, value in own.items() if not key.startswith(last)}
            state = ldm.convert_open_clip_checkpoint(model, own, prefix=prefix)
            if model_class is not CLIPTextModelWithProjection:
                state.pop("text_projection.weight", None)
        else:
            state = ldm.convert_ldm_clip_checkpoint({k: v for k, v in weights.items() if k.startswith(prefix)})
        if not hasattr(model, "text_model"):
            state = {key.removeprefix("text_model."): value for key, value in state.items()}
        state = {key: value for key, value in state.items() if not key.endswith("position_ids")}
        _fill(model, state, f"{where}: {name}", dtype)
        parts[name] = model
    return parts


def _build(model_class: Any, config: dict[str, Any]) -> Any:
    with init_empty_weights():
        return model_class.from_config({key: value for key, value in config.items() if not key.startswith("_")})


def _fill(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str, dtype: torch.dtype) -> None:
    """Load `state` into the empty `model` in `dtype`, every tensor present and of its shape."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(key for key in set(expected) & set(state) if tuple(expected[key].shape) != tuple(state[key].shape))
    if missing or unexpected or wrong:
        details = "; ".join(f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
                            for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys)
        raise UnusableModelFile(f"{where} does not match its detected architecture: {details}")
    model.load_state_dict({key: value.to(dtype).contiguous() for key, value in state.items()}, strict=True, assign=True)
    model.eval()


def _scheduler_class(name: str) -> type[SchedulerMixin]:
    import diffusers

    scheduler_class = getattr(diffusers, name)
    return scheduler_class  # type: ignore[no-any-return]


def _attention_heads(published: dict[str, Any], channels: list[int]) -> int | list[int]:
    """SD 1.x has a fixed number of heads (diffusers calls it attention_head_dim); SD 2.x and XL a
    fixed head width: both kept from the published config and applied to the checkpoint's widths."""
    heads = published["attention_head_dim"]
    if isinstance(heads, int):
        return heads
    published_channels = published["block_out_channels"]
    width = published_channels[0] // heads[0]
    return [max(1, channel // width) for channel in channels]


def _pooled_width(shapes: Shapes, architecture: str, published_unet: dict[str, Any]) -> int:
    """The pooled text embedding's width: the OpenCLIP encoder's projection."""
    projection = shapes.get(f"{OPEN_CLIP_PREFIXES[architecture]}text_projection")
    if projection is not None:
        return int(projection[1])
    time_ids = TIME_IDS[architecture] * int(published_unet["addition_time_embed_dim"])
    return int(published_unet["projection_class_embeddings_input_dim"]) - time_ids


def _cross_attention_dim(shapes: Shapes) -> int:
    return int(shapes[_first_key(shapes, ".attn2.to_k.weight")][1])


def _first_key(shapes: Shapes, suffix: str) -> str:
    for key in shapes:
        if key.startswith(UNET_PREFIX) and key.endswith(suffix):
            return key
    raise UnusableModelFile(f"the checkpoint's UNet has no '*{suffix}': not a known layout")


def _with_text_model_prefix(tensors: dict[str, Any]) -> dict[str, Any]:
    """Older checkpoints keep CLIP ViT-L without transformers' `text_model.` level
    (`cond_stage_model.transformer.embeddings...`); give them the level the newer ones have."""
    renamed = {}
    for key, value in tensors.items():
        for prefix in CLIP_PREFIXES.values():
            if key.startswith(prefix) and not key.startswith(prefix + "text_model."):
                key = f"{prefix}text_model.{key[len(prefix):]}"
        renamed[key] = value
    return renamed


def _has_prefix(shapes: Mapping[str, object], prefix: str) -> bool:
    return any(key.startswith(prefix) for key in shapes)


def _is_file(path: Path | None) -> bool:
    return path is not None and path.is_file()
