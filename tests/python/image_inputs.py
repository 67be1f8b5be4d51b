"""Input pictures and masks for the image-to-image and inpainting tests, and the base64 PNGs that
carry images in and out of the generate route."""
from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image, ImageDraw


def picture(seed: int, size: int) -> Image.Image:
    """A smooth random picture: low-frequency noise upscaled, so the VAE sees structure."""
    rng = np.random.default_rng(seed)
    small = (rng.random((size // 16, size // 16, 3)) * 255).astype(np.uint8)
    return Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)


def rectangle_mask(size: int) -> Image.Image:
    """White (repaint) over a band in the upper half, black elsewhere."""
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rectangle((size // 4, size // 4, size * 3 // 4 - 1, size // 2), fill=255)
    return mask


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def generated_pixels(reply: object) -> np.ndarray:
    """The one image of a generate reply, as RGB pixels [H, W, 3]."""
    assert isinstance(reply, dict)
    [encoded] = reply["generated_image"]
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as image:
        return np.asarray(image.convert("RGB"))
