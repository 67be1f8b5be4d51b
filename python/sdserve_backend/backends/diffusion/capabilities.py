"""What a loaded diffusion model declares to the core in its LoadResponse (docs/backend-protocol.md,
"Capabilities"): its tasks, how it batches, and every request parameter it reads, with the type,
range and default that this model's config gives it."""

from __future__ import annotations

from typing import Any

from sdserve_backend.backends.diffusion import settings as model_settings
from sdserve_backend.backends.diffusion.settings import ModelDefaults
from sdserve_backend.image_encoding import DEFAULT_COMPRESSION, OUTPUT_FORMATS
from sdserve_backend.pipelines.requests import DEFAULT_AESTHETIC_SCORE, DEFAULT_NEGATIVE_AESTHETIC_SCORE
from sdserve_backend.pipelines.tasks.inpaint import MAX_MASK_BLUR
from sdserve_backend.pipelines.tasks.text_to_image import MAX_AESTHETIC_SCORE
from sdserve_backend.pipelines.schedulers import available_short_names, supported_scheduler_names

TASKS = ("text_to_image", "image_to_image", "inpaint")
# Shapes without the batch dimension, as config.pbtxt writes them.
INPUTS = (
    {"name": "prompt", "datatype": "BYTES", "dims": [1]},
    {"name": "negative_prompt", "datatype": "BYTES", "dims": [1], "optional": True},
    # Image-to-image and inpainting: one image (and mask) per prompt, as pixels or as a PNG, JPEG
    # or WebP file. The same name is declared in both forms; the core accepts either.
    {"name": "image", "datatype": "UINT8", "dims": [-1, -1, -1], "optional": True},
    {"name": "image", "datatype": "BYTES", "dims": [1], "optional": True},
    {"name": "mask", "datatype": "UINT8", "dims": [-1, -1, -1], "optional": True},
    {"name": "mask", "datatype": "BYTES", "dims": [1], "optional": True},
)
OUTPUTS = (
    {"name": "generated_image", "datatype": "UINT8", "dims": [-1, -1, 3]},
    # Sent when the request names it or sets `output_format`: one file per image.
    {"name": "generated_image_encoded", "datatype": "BYTES", "dims": [1]},
)


def declare(defaults: ModelDefaults, max_images: int, max_steps: int, lora_names: list[str] | None = None,
            is_refiner: bool = False) -> dict[str, Any]:
    """The `capabilities` object of the LoadResponse for a model loaded with `defaults`; `lora_names`:
    the LoRA files present at load, offered to forms as `examples` (files added later work too);
    `is_refiner`: an SDXL refiner (image tasks only, aesthetic scores)."""
    base = defaults.settings
    side = {"type": "integer", "minimum": 8, "maximum": model_settings.MAX_IMAGE_SIDE, "multiple_of": 8}
    seed: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": model_settings.MAX_SEED}
    if defaults.seed is not None:
        seed["default"] = defaults.seed
    parameters: dict[str, dict[str, Any]] = {
        "steps": {"type": "integer", "minimum": 1, "maximum": max_steps, "default": base.steps},
        "guidance_scale": {"type": "number", "minimum": 0, "default": base.guidance_scale},
        "seed": seed,
        "scheduler": {"type": "string", "enum": ["", *available_short_names(), *supported_scheduler_names()],
                      "default": base.scheduler},
        "height": {**side, "default": base.height},
        "width": {**side, "default": base.width},
        "preview": {"type": ["boolean", "integer"], "minimum": 0, "default": False},
        "output_format": {"type": "string", "enum": list(OUTPUT_FORMATS), "default": OUTPUT_FORMATS[0]},
        "output_compression": {"type": "integer", "minimum": 0, "maximum": 100, "default": DEFAULT_COMPRESSION},
        "prompt_chunking": {"type": "boolean", "default": defaults.prompt_chunking},
        "strength": {"type": "number", "minimum": 0, "maximum": 1, "aliases": ["denoising_strength"],
                     "description": "image-to-image and inpainting: how much of the schedule runs from the image "
                                    "(default 0.8; inpainting 1.0)"},
        "mask_blur": {"type": "integer", "minimum": 0, "maximum": MAX_MASK_BLUR, "default": 0,
                      "description": "inpainting: Gaussian blur radius of the mask's edge, in pixels"},
        "mask_from_alpha": {"type": "boolean", "default": False,
                            "description": "inpainting: the mask's transparent pixels mark what to repaint "
                                           "(OpenAI's images/edits); without a mask, the image's own"},
        # A JSON text, as v2 parameters are scalars; generate and OpenAI also take the list itself.
        "loras": {"type": "string", "default": "",
                  "description": 'LoRAs for this request: a JSON list of {"name": <file name without .safetensors>, '
                                 '"scale": <number, default 1>}; prompts may also hold <lora:name:scale>'},
        # Fast modes (pipelines/denoise.py): a guidance interval, feature caching across steps.
        "guidance_start": {"type": "number", "minimum": 0, "maximum": 1, "default": base.guidance_start},
        "guidance_end": {"type": "number", "minimum": 0, "maximum": 1, "default": base.guidance_end},
        "cache_interval": {"type": "integer", "minimum": 1, "maximum": max_steps, "default": base.cache_interval},
    }
    if lora_names:
        parameters["loras"]["examples"] = list(lora_names)
    if is_refiner:
        parameters["strength"]["description"] = "how much of the schedule runs from the image (default 0.3)"
        parameters["aesthetic_score"] = {
            "type": "number", "minimum": 0, "maximum": MAX_AESTHETIC_SCORE, "default": DEFAULT_AESTHETIC_SCORE,
            "description": "SDXL refiner: the aesthetic score (0-10) the image is conditioned on"}
        parameters["negative_aesthetic_score"] = {
            "type": "number", "minimum": 0, "maximum": MAX_AESTHETIC_SCORE, "default": DEFAULT_NEGATIVE_AESTHETIC_SCORE,
            "description": "SDXL refiner: the aesthetic score of the negative (unconditional) rows"}
    if defaults.refiner:
        parameters["high_noise_fraction"] = {
            "type": "number", "minimum": 0, "maximum": 1, "default": defaults.high_noise_fraction,
            "aliases": ["refiner_switch_at"],
            "description": f"text-to-image: the fraction of the schedule this model runs before its refiner "
                           f"{defaults.refiner!r} takes over (1: this model alone)"}
    declared: dict[str, Any] = {
        "tasks": [task for task in TASKS if not (is_refiner and task == "text_to_image")],
        "batching": "step" if defaults.step_batching else "request",
        "max_images": max(1, max_images),
        "inputs": [dict(tensor) for tensor in INPUTS],
        "outputs": [dict(tensor) for tensor in OUTPUTS],
        "image_output": OUTPUTS[0]["name"],
        "encoded_output": OUTPUTS[1]["name"],
        "parameters": parameters,
        "config_parameters": sorted(model_settings.CONFIG_PARAMETERS),
    }
    if defaults.refiner:
        # The refiner model of this repository that finishes text-to-image requests, by name, for
        # front ends that let clients name it (Automatic1111's `refiner_checkpoint`).
        declared["refiner"] = defaults.refiner
    return declared
