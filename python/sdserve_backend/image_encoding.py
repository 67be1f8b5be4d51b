"""Generated images as PNG, JPEG or WebP files, encoded with Pillow.

PNGs carry the generation parameters in a tEXt chunk named `parameters`, in the layout
Automatic1111 writes and reads, so an image can be reproduced from its file:

    a photo of a cat
    Negative prompt: blurry
    Steps: 30, Sampler: Euler a, CFG scale: 7.5, Seed: 1, Size: 512x512, Model: tiny_sd

`output_compression` follows OpenAI's images API: 0-100 for JPEG and WebP, 100 (the default)
the least compression; PNG is lossless and ignores it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sdserve_backend.quoting import quoted

OUTPUT_FORMATS = ("png", "jpeg", "webp")
DEFAULT_COMPRESSION = 100
# PNG's zlib level: 6 is zlib's (and Pillow's) own balance of size and time.
PNG_COMPRESS_LEVEL = 6
# Automatic1111's sampler labels for the schedulers that have one; others keep their own name.
SAMPLER_LABELS = {
    "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a",
    "DDIMScheduler": "DDIM",
    "DDPMScheduler": "DDPM",
    "PNDMScheduler": "PLMS",
    "LMSDiscreteScheduler": "LMS",
    "DPMSolverMultistepScheduler": "DPM++ 2M",
    "UniPCMultistepScheduler": "UniPC",
    "HeunDiscreteScheduler": "Heun",
}


@dataclass(frozen=True)
class OutputEncoding:
    format: str = "png"
    compression: int = DEFAULT_COMPRESSION


@dataclass(frozen=True)
class GenerationInfo:
    """What made one image: enough to make it again."""

    prompt: str
    negative_prompt: str | None
    steps: int
    scheduler_class: str
    guidance_scale: float
    seed: int
    width: int
    height: int
    model: str
    # Images of one request share its seed; the position tells which one this is.
    batch_size: int = 1
    batch_position: int = 0
    # The refiner that finished the image, and the fraction of the schedule before it took over.
    refiner: str | None = None
    refiner_switch_at: float | None = None

    def as_text(self) -> str:
        """Automatic1111's `parameters` text."""
        lines = [self.prompt]
        if self.negative_prompt:
            lines.append(f"Negative prompt: {self.negative_prompt}")
        fields = [
            f"Steps: {self.steps}",
            f"Sampler: {SAMPLER_LABELS.get(self.scheduler_class, self.scheduler_class)}",
            f"CFG scale: {self.guidance_scale:g}",
            f"Seed: {self.seed}",
            f"Size: {self.width}x{self.height}",
            f"Model: {self.model}",
        ]
        if self.refiner is not None:
            fields += [f"Refiner: {self.refiner}", f"Refiner switch at: {self.refiner_switch_at:g}"]
        if self.batch_size > 1:
            fields += [f"Batch size: {self.batch_size}", f"Batch pos: {self.batch_position}"]
        lines.append(", ".join(fields))
        return "\n".join(lines)


def encode_image(image: np.ndarray, encoding: OutputEncoding, info: GenerationInfo | None = None) -> bytes:
    """One uint8 [H, W, 3] image as a file of `encoding.format`."""
    picture = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    out = io.BytesIO()
    if encoding.format == "png":
        text = PngInfo()
        if info is not None:
            text.add_text("parameters", info.as_text())
        picture.save(out, format="PNG", pnginfo=text, compress_level=PNG_COMPRESS_LEVEL)
    elif encoding.format == "jpeg":
        picture.save(out, format="JPEG", quality=encoding.compression)
    elif encoding.format == "webp":
        picture.save(out, format="WEBP", quality=encoding.compression)
    else:
        raise ValueError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, got {quoted(encoding.format)}")
    return out.getvalue()
