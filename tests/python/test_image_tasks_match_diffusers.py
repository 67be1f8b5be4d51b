"""Image-to-image and inpainting equal diffusers' own pipelines for the same inputs.

References: `StableDiffusion(XL)Img2ImgPipeline` and `StableDiffusion(XL)InpaintPipeline` with
output_type="np", turned into uint8 as `(x * 255).round()`; for inpainting, then pasted back onto
the input image with diffusers' `apply_overlay` (which sdserve always does). All on the CPU in
float32 on the tiny models (the `-inpaint` variants have a 9-channel inpainting UNet).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    DiffusionPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
)
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from image_inputs import picture, rectangle_mask
from sdserve_backend.pipelines import GenerationRequest, GenerationSettings, TextToImagePipeline, load_components
from sdserve_backend.pipelines import make_scheduler
from sdserve_backend.tiny_model import make_tiny_model

TOLERANCE = 2  # max abs difference in uint8 levels
STEPS = 5
SIZE = 128
PROMPT = "a photo of the cat"
OTHER_PROMPT = "a dog on the moon"

PipelineLoader = Callable[[str], TextToImagePipeline]
_references: dict[tuple[str, str], DiffusionPipeline] = {}
REFERENCE_CLASSES = {
    ("sd", "img2img"): StableDiffusionImg2ImgPipeline,
    ("sdxl", "img2img"): StableDiffusionXLImg2ImgPipeline,
    ("sd", "inpaint"): StableDiffusionInpaintPipeline,
    ("sdxl", "inpaint"): StableDiffusionXLInpaintPipeline,
}


@pytest.fixture(scope="session")
def inpainting_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_inpainting_models")
    return {variant: make_tiny_model(root / variant, variant, seed=0) for variant in ("sd-inpaint", "sdxl-inpaint")}


@pytest.fixture(scope="session")
def model_dirs(tiny_model_dirs: dict[str, Path], inpainting_model_dirs: dict[str, Path]) -> dict[str, Path]:
    return {**tiny_model_dirs, **inpainting_model_dirs}


@pytest.fixture(scope="session")
def load_pipeline(model_dirs: dict[str, Path]) -> PipelineLoader:
    loaded: dict[str, TextToImagePipeline] = {}

    def load(variant: str) -> TextToImagePipeline:
        if variant not in loaded:
            loaded[variant] = TextToImagePipeline(load_components(model_dirs[variant], torch.device("cpu"), torch.float32))
        return loaded[variant]

    return load


def reference_pipeline(variant: str, kind: str, folder: Path) -> DiffusionPipeline:
    base = variant.removesuffix("-inpaint")
    key = (variant, kind)
    if key not in _references:
        _references[key] = REFERENCE_CLASSES[(base, kind)].from_pretrained(folder, local_files_only=True)
        _references[key].set_progress_bar_config(disable=True)
    return _references[key]




def as_uint8(images: np.ndarray) -> np.ndarray:
    return (images * 255).round().astype(np.uint8)


def max_difference(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def run_reference(reference: DiffusionPipeline, ours: TextToImagePipeline, scheduler: str, **kwargs: object) -> np.ndarray:
    parts = ours.components
    reference.scheduler = make_scheduler(scheduler, parts.scheduler_class, parts.scheduler_config)
    return reference(num_inference_steps=STEPS, output_type="np", **kwargs).images


@pytest.mark.parametrize("variant", ["sd", "sdxl"])
@pytest.mark.parametrize(("strength", "guidance_scale", "scheduler"),
                         [(0.6, 7.5, ""), (0.8, 1.0, "euler_a"), (1.0, 5.0, "dpm++")])
def test_image_to_image_matches_diffusers(
    variant: str, strength: float, guidance_scale: float, scheduler: str, load_pipeline: PipelineLoader,
    model_dirs: dict[str, Path],
) -> None:
    ours = load_pipeline(variant)
    reference = reference_pipeline(variant, "img2img", model_dirs[variant])
    images = (picture(1, SIZE), picture(2, SIZE))
    request = GenerationRequest([PROMPT, OTHER_PROMPT], seed=9, negative_prompts=["blurry", "blurry"],
                                images=images, strength=strength)

    [ours_images] = ours([request], GenerationSettings(SIZE, SIZE, STEPS, guidance_scale, scheduler))

    expected = run_reference(
        reference, ours, scheduler, prompt=[PROMPT, OTHER_PROMPT], negative_prompt=["blurry", "blurry"],
        image=list(images), strength=strength, guidance_scale=guidance_scale,
        generator=torch.Generator("cpu").manual_seed(9),
    )
    assert ours_images.shape == (2, SIZE, SIZE, 3)
    assert max_difference(ours_images, as_uint8(expected)) <= TOLERANCE


def test_image_to_image_follows_the_image_and_strength(load_pipeline: PipelineLoader) -> None:
    # Guards the comparison above: were the image or strength ignored, it could not tell.
    ours = load_pipeline("sd")
    settings = GenerationSettings(SIZE, SIZE, STEPS, 7.5)

    def run(image: Image.Image, strength: float) -> np.ndarray:
        return ours([GenerationRequest([PROMPT], seed=3, images=(image,), strength=strength)], settings)[0]

    base = run(picture(1, SIZE), 0.6)
    assert max_difference(base, run(picture(2, SIZE), 0.6)) > TOLERANCE
    assert max_difference(base, run(picture(1, SIZE), 0.8)) > TOLERANCE
    # A low strength keeps the image: closer to it than a high one.
    source = np.asarray(picture(1, SIZE)).astype(np.int16)
    assert np.abs(run(picture(1, SIZE), 0.2) - source).mean() < np.abs(run(picture(1, SIZE), 1.0) - source).mean()


@pytest.mark.parametrize("variant", ["sd", "sdxl", "sd-inpaint", "sdxl-inpaint"])
@pytest.mark.parametrize(("strength", "mask_blur", "scheduler"), [(1.0, 0, ""), (0.7, 4, "euler_a")])
def test_inpainting_matches_diffusers_with_the_unmasked_pixels_pasted_back(
    variant: str, strength: float, mask_blur: int, scheduler: str, load_pipeline: PipelineLoader,
    model_dirs: dict[str, Path],
) -> None:
    ours = load_pipeline(variant)
    reference = reference_pipeline(variant, "inpaint", model_dirs[variant])
    image, mask = picture(4, SIZE), rectangle_mask(SIZE)
    request = GenerationRequest([PROMPT], seed=21, images=(image,), masks=(mask,), strength=strength,
                                mask_blur=mask_blur)

    [ours_images] = ours([request], GenerationSettings(SIZE, SIZE, STEPS, 6.0, scheduler))

    blurred = VaeImageProcessor.blur(mask, mask_blur) if mask_blur else mask
    [generated] = run_reference(
        reference, ours, scheduler, prompt=[PROMPT], image=image, mask_image=blurred, strength=strength,
        guidance_scale=6.0, height=SIZE, width=SIZE, generator=torch.Generator("cpu").manual_seed(21),
    )
    expected = reference.image_processor.apply_overlay(blurred, image, Image.fromarray(as_uint8(generated)))
    assert max_difference(ours_images[0], np.asarray(expected)) <= TOLERANCE
    # Where the mask is black, the pixels are the input's own, exactly.
    unmasked = np.asarray(blurred) == 0
    assert np.array_equal(ours_images[0][unmasked], np.asarray(image)[unmasked])
    assert max_difference(ours_images[0], np.asarray(image)) > TOLERANCE


def test_an_inpainting_model_refuses_a_request_without_a_mask(load_pipeline: PipelineLoader) -> None:
    ours = load_pipeline("sd-inpaint")
    settings = GenerationSettings(SIZE, SIZE, STEPS, 7.5)
    with pytest.raises(ValueError, match="inpainting model"):
        ours.check_inputs([GenerationRequest([PROMPT], seed=1)], settings)
    with pytest.raises(ValueError, match="inpainting model"):
        ours.check_inputs([GenerationRequest([PROMPT], seed=1, images=(picture(1, SIZE),))], settings)


@pytest.mark.parametrize(
    ("request_fields", "message"),
    [
        ({"strength": 0.0}, r"strength must be a number in \(0, 1\]"),
        ({"strength": 1.5}, r"strength must be a number in \(0, 1\]"),
        ({"strength": 0.1}, "leaves no step to run"),
        ({"masks": (rectangle_mask(64),)}, "a mask must be the size of its image"),
        ({"masks": (rectangle_mask(SIZE),), "mask_blur": 65}, "mask_blur must be an integer from 0 to 64"),
        ({"images": (picture(1, SIZE), picture(2, SIZE), picture(3, SIZE))}, "input 'image' must hold 1 or 2 images"),
    ],
)
def test_bad_image_requests_are_refused_naming_the_argument(
    request_fields: dict[str, object], message: str, load_pipeline: PipelineLoader
) -> None:
    fields: dict[str, object] = {"images": (picture(1, SIZE),), **request_fields}
    request = GenerationRequest([PROMPT, OTHER_PROMPT], seed=1, **fields)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        load_pipeline("sd").check_inputs([request], GenerationSettings(SIZE, SIZE, STEPS, 7.5))
