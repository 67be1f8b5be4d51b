"""Input images of a request (`image`, `mask`) into Pillow images, refusing bad ones before any
GPU work.

Each input comes one image per prompt (or one for all) in either form:
- UINT8 [B, H, W, C] (C = 1, 3 or 4): the pixels;
- BYTES [B, 1]: each element a PNG, JPEG or WebP file.

A file's size is read from its header and checked before its pixels are decoded, so a small
file that would decode to a huge image (a decompression bomb) costs nothing.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

# The largest side and the most pixels an input image may have (sdserve makes at most 4096²).
MAX_INPUT_SIDE = 4096
MAX_INPUT_PIXELS = MAX_INPUT_SIDE * MAX_INPUT_SIDE
FILE_FORMATS = ("PNG", "JPEG", "WEBP")


def read_images(name: str, array: np.ndarray) -> list[Image.Image]:
    """The images of input `name` as Pillow images in their own mode; ValueError naming the input
    and the element for anything that is not a usable image."""
    if array.dtype == np.object_ or array.dtype.kind in ("S", "U"):
        elements = array.reshape(-1)
        if len(elements) == 0:
            raise ValueError(f"input '{name}' holds no image")
        return [_open_file(name, index, element) for index, element in enumerate(elements)]
    if array.dtype != np.uint8:
        raise ValueError(f"input '{name}' must be UINT8 pixels [B, H, W, C] or BYTES image files, got {array.dtype}")
    if array.ndim == 3:
        array = array[np.newaxis]
    if array.ndim != 4 or array.shape[0] < 1 or array.shape[3] not in (1, 3, 4):
        raise ValueError(
            f"input '{name}' as UINT8 must have the shape [B, H, W, C] with C = 1, 3 or 4, got {list(array.shape)}"
        )
    _check_size(name, 0, array.shape[2], array.shape[1])
    modes = {1: "L", 3: "RGB", 4: "RGBA"}
    channels = array.shape[3]
    return [Image.fromarray(np.ascontiguousarray(pixels if channels > 1 else pixels[..., 0]), modes[channels])
            for pixels in array]


def as_rgb(images: list[Image.Image]) -> list[Image.Image]:
    return [image if image.mode == "RGB" else image.convert("RGB") for image in images]


def as_masks(images: list[Image.Image], from_alpha: bool) -> list[Image.Image]:
    """Masks in mode "L", white = repaint: from their luminance (diffusers, Automatic1111), or,
    `from_alpha`, from their transparency (OpenAI's images/edits: transparent = repaint)."""
    if not from_alpha:
        return [image if image.mode == "L" else image.convert("L") for image in images]
    masks = []
    for index, image in enumerate(images):
        if "A" not in image.getbands() and not (image.mode == "P" and "transparency" in image.info):
            raise ValueError(f"input 'mask' {index} has no alpha channel; its transparent pixels mark what to repaint")
        alpha = image.convert("RGBA").getchannel("A")
        masks.append(alpha.point(lambda value: 255 - value))
    return masks


def alpha_masks(images: list[Image.Image]) -> list[Image.Image] | None:
    """Masks from the images' own transparency (OpenAI's images/edits without a mask), or None
    when no image has a transparent pixel."""
    alphas = [image.convert("RGBA").getchannel("A") for image in images if "A" in image.getbands()]
    if len(alphas) != len(images) or all(alpha.getextrema()[0] == 255 for alpha in alphas):
        return None
    return [alpha.point(lambda value: 255 - value) for alpha in alphas]


def _open_file(name: str, index: int, element: object) -> Image.Image:
    if isinstance(element, str):
        element = element.encode("latin-1")
    if not isinstance(element, (bytes, bytearray)):
        raise ValueError(f"input '{name}' element {index} must be BYTES, got {type(element).__name__}")
    with warnings.catch_warnings():
        # Pillow warns of large images on open; the size is checked below, before any decoding.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(element), formats=FILE_FORMATS)
        except Image.DecompressionBombError:
            raise ValueError(
                f"input '{name}' element {index} is too large; input images may be at most {MAX_INPUT_SIDE}x{MAX_INPUT_SIDE}"
            ) from None
        except (UnidentifiedImageError, OSError, ValueError):
            raise ValueError(
                f"input '{name}' element {index} is not a PNG, JPEG or WebP image ({len(element)} bytes)"
            ) from None
        _check_size(name, index, image.width, image.height)
        try:
            image.load()
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise ValueError(f"input '{name}' element {index} is a damaged {image.format} file: {error}") from None
    return image


def _check_size(name: str, index: int, width: int, height: int) -> None:
    if width < 1 or height < 1 or width > MAX_INPUT_SIDE or height > MAX_INPUT_SIDE or width * height > MAX_INPUT_PIXELS:
        raise ValueError(
            f"input '{name}' element {index} is {width}x{height}; input images may be at most "
            f"{MAX_INPUT_SIDE}x{MAX_INPUT_SIDE}"
        )
