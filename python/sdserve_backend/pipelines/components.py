"""Loading the models of a Stable Diffusion checkpoint (1.5, 2.x or XL) onto one device.

Two on-disk forms are accepted, both strictly offline:
- a diffusers folder (model_index.json plus one subfolder per component);
- a single `.safetensors` checkpoint in the original layout: its architecture told from its keys,
  its configs and tokenizers shipped with sdserve (`single_file.py`); or, when a local diffusers
  folder for the component configs is given, read with diffusers' `from_single_file`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, SchedulerMixin, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from sdserve_backend.config_errors import InvalidParameter, ModelFileNotFound, UnusableModelFile
from sdserve_backend.pipelines import schedulers
from sdserve_backend.pipelines.single_file import CheckpointOptions, load_single_file

SDXL_PIPELINE_CLASS = "StableDiffusionXLPipeline"
SD_PIPELINE_CLASS = "StableDiffusionPipeline"
SINGLE_FILE_SUFFIXES = (".safetensors",)


@dataclass(frozen=True)
class DiffusionComponents:
    """Everything a text-to-image run needs, already on `device` in `dtype`."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    # None for the SDXL refiner, which conditions on the second encoder alone.
    tokenizer: CLIPTokenizer | None
    text_encoder: CLIPTextModel | None
    # Stable Diffusion XL's second (OpenCLIP bigG) encoder; None for 1.x / 2.x.
    tokenizer_2: CLIPTokenizer | None
    text_encoder_2: CLIPTextModelWithProjection | None
    scheduler_class: type[SchedulerMixin]
    scheduler_config: dict[str, Any]
    # SDXL: an absent negative prompt means zero embeddings rather than the encoding of "".
    force_zeros_for_empty_prompt: bool
    device: torch.device
    dtype: torch.dtype
    # The SDXL refiner: its UNet's time ids hold an aesthetic score in place of the target size.
    requires_aesthetics_score: bool = False

    @property
    def is_sdxl(self) -> bool:
        return self.text_encoder_2 is not None

    @property
    def is_inpainting(self) -> bool:
        """A 9-channel inpainting UNet: latents, the mask and the masked image's latents."""
        return int(self.unet.config.in_channels) == 9

    @property
    def guidance_embedding_dim(self) -> int | None:
        """A guidance-distilled UNet (LCM): the width of the guidance-scale embedding it takes as
        a timestep condition instead of running classifier-free guidance; None for others."""
        dim = self.unet.config.time_cond_proj_dim
        return None if dim is None else int(dim)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_image_size(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale_factor


def load_components(
    weights: Path, device: torch.device, dtype: torch.dtype, config_dir: Path | None = None,
    options: CheckpointOptions | None = None,
) -> DiffusionComponents:
    """Load a diffusers folder or a single-file checkpoint at `weights` onto `device`.

    `config_dir` (optional, single files only): a local diffusers folder whose configs describe the
    checkpoint, instead of the shipped ones. `options`: a separate VAE, text encoders, prediction type.
    """
    options = options or CheckpointOptions()
    weights = Path(weights)
    if weights.is_dir():
        if not (weights / "model_index.json").is_file():
            raise ModelFileNotFound(f"{weights} is not a diffusers model folder: it has no model_index.json")
        if options.vae is not None or options.text_encoders is not None:
            raise InvalidParameter("vae_weights and text_encoder_weights complete a single-file checkpoint; "
                             f"{weights} is a diffusers folder")
        components = _load_diffusers_folder(weights, dtype, device)
    elif weights.is_file() and weights.suffix in SINGLE_FILE_SUFFIXES and config_dir is None:
        components = load_single_file(weights, options, dtype)
    elif weights.is_file() and weights.suffix in SINGLE_FILE_SUFFIXES:
        components = _load_single_file(weights, config_dir, dtype)
    elif weights.is_file():
        raise UnusableModelFile(f"weights file {weights} is not a .safetensors checkpoint")
    else:
        raise ModelFileNotFound(f"weights not found at {weights}")
    if options.prediction_type is not None:
        components["scheduler_config"] = {**components["scheduler_config"], "prediction_type": options.prediction_type}
    return _place(components, device, dtype)


def detect_version(components: DiffusionComponents) -> str | None:
    """"xl-1.0", "2.1" or "1.5" as the weights' architecture says, None when it is not telling."""
    if components.is_sdxl:
        return "xl-1.0"
    # The text encoder width differs: CLIP ViT-L (768) for 1.x, OpenCLIP ViT-H (1024) for 2.x.
    cross_attention_dim = components.unet.config.cross_attention_dim
    return {768: "1.5", 1024: "2.1"}.get(cross_attention_dim)


def _load_diffusers_folder(folder: Path, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    model_index = json.loads((folder / "model_index.json").read_text())
    is_sdxl = _is_present(model_index, "text_encoder_2")
    # The SDXL refiner has the second text encoder only.
    has_first_encoder = _is_present(model_index, "text_encoder")
    if not has_first_encoder and not is_sdxl:
        raise UnusableModelFile(f"{folder}: the model has no text encoder (model_index.json names neither text_encoder nor text_encoder_2)")
    # On a GPU the safetensors are read straight into device memory (no CPU copy to move after).
    placed = {"device_map": str(device)} if device.type == "cuda" else {}

    def load(model_class: Any, subfolder: str) -> Any:
        return model_class.from_pretrained(folder, subfolder=subfolder, torch_dtype=dtype, local_files_only=True, **placed)

    scheduler_class_name = model_index["scheduler"][1]
    scheduler_class = schedulers.resolve_scheduler_class(scheduler_class_name, default_class=SchedulerMixin)
    return {
        "unet": load(UNet2DConditionModel, "unet"),
        "vae": load(AutoencoderKL, "vae"),
        "tokenizer": (
            CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True) if has_first_encoder else None
        ),
        "text_encoder": load(CLIPTextModel, "text_encoder") if has_first_encoder else None,
        "tokenizer_2": (
            CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2", local_files_only=True) if is_sdxl else None
        ),
        "text_encoder_2": load(CLIPTextModelWithProjection, "text_encoder_2") if is_sdxl else None,
        "scheduler_class": scheduler_class,
        "scheduler_config": dict(scheduler_class.load_config(folder, subfolder="scheduler", local_files_only=True)),
        "force_zeros_for_empty_prompt": bool(model_index.get("force_zeros_for_empty_prompt", is_sdxl)),
        "requires_aesthetics_score": bool(model_index.get("requires_aesthetics_score", False)),
    }


def _load_single_file(checkpoint: Path, config_dir: Path | None, dtype: torch.dtype) -> dict[str, Any]:
    needed = (
        "a local diffusers folder with model_index.json, scheduler/, unet/config.json, vae/config.json, "
        "text_encoder/config.json and tokenizer/ (plus text_encoder_2/ and tokenizer_2/ for SDXL) that "
        "describes this checkpoint's architecture"
    )
    if config_dir is None:
        raise ValueError(f"loading the single-file checkpoint {checkpoint} offline needs {needed}; none was given")
    if not (Path(config_dir) / "model_index.json").is_file():
        raise ModelFileNotFound(f"config folder {config_dir} has no model_index.json; loading {checkpoint} needs {needed}")

    # Imported here: the pipeline classes pull in much of transformers, and only this path needs them.
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    model_index = json.loads((Path(config_dir) / "model_index.json").read_text())
    is_sdxl = model_index.get("_class_name") == SDXL_PIPELINE_CLASS or _is_present(model_index, "text_encoder_2")
    extra: dict[str, Any] = {} if is_sdxl else {"safety_checker": None, "requires_safety_checker": False}
    pipeline_class = StableDiffusionXLPipeline if is_sdxl else StableDiffusionPipeline
    pipeline = pipeline_class.from_single_file(
        str(checkpoint), config=str(config_dir), local_files_only=True, torch_dtype=dtype, **extra
    )
    return {
        "unet": pipeline.unet,
        "vae": pipeline.vae,
        "tokenizer": pipeline.tokenizer,
        "text_encoder": pipeline.text_encoder,
        "tokenizer_2": getattr(pipeline, "tokenizer_2", None),
        "text_encoder_2": getattr(pipeline, "text_encoder_2", None),
        "scheduler_class": type(pipeline.scheduler),
        "scheduler_config": dict(pipeline.scheduler.config),
        "force_zeros_for_empty_prompt": bool(model_index.get("force_zeros_for_empty_prompt", is_sdxl)),
    }


def _place(parts: dict[str, Any], device: torch.device, dtype: torch.dtype) -> DiffusionComponents:
    vae: AutoencoderKL = parts["vae"]
    # The SDXL VAE overflows in float16; diffusers upcasts it for decoding when force_upcast is set.
    # Keeping it in float32 from the start gives the same numbers without casting per batch.
    is_sdxl = parts["text_encoder_2"] is not None
    vae_dtype = torch.float32 if is_sdxl and dtype == torch.float16 and vae.config.force_upcast else dtype
    for name in ("unet", "text_encoder", "text_encoder_2"):
        if parts[name] is not None:
            parts[name] = parts[name].to(device).eval()
    if vae.dtype != vae_dtype:
        vae = vae.to(dtype=vae_dtype)
    parts["vae"] = vae.to(device).eval()
    return DiffusionComponents(device=device, dtype=dtype, **parts)


def _is_present(model_index: dict[str, Any], component: str) -> bool:
    entry = model_index.get(component)
    return isinstance(entry, list) and len(entry) == 2 and entry[1] is not None
