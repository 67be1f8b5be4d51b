"""The SDXL refiner on the tiny `sdxl_refiner` variant (second text encoder only, aesthetic-score
time ids): its image-to-image equals diffusers' `StableDiffusionXLImg2ImgPipeline`, and the base ->
refiner handoff ("ensemble of experts") equals `StableDiffusionXLPipeline(denoising_end=f,
output_type="latent")` followed by `StableDiffusionXLImg2ImgPipeline(denoising_start=f)` with the
same generator (CPU, float32, same weights, seed and scheduler), in-process, with the step batcher
and through a real server (a base model whose config names the refiner model of its repository).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline


from image_inputs import generated_pixels, picture, png_base64
from sdserve_backend.pipelines import (
    GenerationRequest,
    GenerationSettings,
    StepBatcher,
    TextToImagePipeline,
    load_components,
    make_scheduler,
)
from sdserve_backend.tiny_model import make_tiny_model
from sdserve_server import PROJECT_ROOT, ServerAddresses, http_json, make_repository, serving

SIZE = 64
STEPS = 6
PROMPT = "a photo of the cat"
NEGATIVE = "blurry"
TOLERANCE = 2  # max abs difference in uint8 levels (float32 rounding), as in the other diffusers tests


@pytest.fixture(scope="module")
def refiner_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("sdxl_refiner") / "1", "sdxl_refiner", seed=0)


@pytest.fixture(scope="module")
def refiner(refiner_dir: Path) -> TextToImagePipeline:
    return TextToImagePipeline(load_components(refiner_dir, torch.device("cpu"), torch.float32))


@pytest.fixture(scope="module")
def base_with_refiner(tiny_model_dirs: dict[str, Path], refiner: TextToImagePipeline) -> TextToImagePipeline:
    base = load_components(tiny_model_dirs["sdxl"], torch.device("cpu"), torch.float32)
    return TextToImagePipeline(base, refiner=refiner.components)


def as_uint8(images: np.ndarray) -> np.ndarray:
    return (images * 255).round().astype(np.uint8)


def assert_matches(ours: np.ndarray, expected: np.ndarray) -> None:
    assert ours.shape == expected.shape and ours.dtype == expected.dtype == np.uint8
    assert int(np.abs(ours.astype(np.int16) - expected.astype(np.int16)).max()) <= TOLERANCE


def diffusers_pipeline(pipeline_class: type, folder: Path, scheduler: str):  # noqa: ANN202
    pipeline = pipeline_class.from_pretrained(folder, local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    config = dict(pipeline.scheduler.config)
    pipeline.scheduler = make_scheduler(scheduler, type(pipeline.scheduler), config)
    return pipeline


def ensemble_of_experts(base_dir: Path, refiner_dir: Path, scheduler: str, fraction: float, seed: int,
                        guidance_scale: float, negative: str | None, **refiner_kwargs: object) -> np.ndarray:
    """diffusers' base -> refiner handoff, one generator for both calls."""
    generator = torch.Generator("cpu").manual_seed(seed)
    latents = diffusers_pipeline(StableDiffusionXLPipeline, base_dir, scheduler)(
        PROMPT, negative_prompt=negative, num_inference_steps=STEPS, guidance_scale=guidance_scale, height=SIZE,
        width=SIZE, denoising_end=fraction, output_type="latent", generator=generator,
    ).images
    images = diffusers_pipeline(StableDiffusionXLImg2ImgPipeline, refiner_dir, scheduler)(
        PROMPT, image=latents, negative_prompt=negative, num_inference_steps=STEPS, guidance_scale=guidance_scale,
        denoising_start=fraction, output_type="np", generator=generator, **refiner_kwargs,
    ).images
    return as_uint8(images)


def test_the_tiny_refiner_is_sdxl_s_refiner(refiner: TextToImagePipeline) -> None:
    parts = refiner.components
    assert parts.text_encoder is None and parts.tokenizer is None and parts.text_encoder_2 is not None
    assert parts.requires_aesthetics_score and parts.is_sdxl
    assert not parts.force_zeros_for_empty_prompt


@pytest.mark.parametrize(("scheduler", "scores"), [("", {}), ("euler_a", {"aesthetic_score": 8.0,
                                                                        "negative_aesthetic_score": 1.0})])
def test_refiner_image_to_image_matches_diffusers(refiner: TextToImagePipeline, refiner_dir: Path, scheduler: str,
                                                  scores: dict[str, float]) -> None:
    init = picture(2, SIZE)
    [image] = refiner([GenerationRequest([PROMPT], seed=4, negative_prompts=[NEGATIVE], images=(init,), **scores)],
                      GenerationSettings(SIZE, SIZE, STEPS, 5.0, scheduler))

    expected = diffusers_pipeline(StableDiffusionXLImg2ImgPipeline, refiner_dir, scheduler)(
        PROMPT, image=init, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=5.0,
        generator=torch.Generator("cpu").manual_seed(4), output_type="np", **scores,
    ).images
    # diffusers' SDXL image-to-image default strength, 0.3, is the refiner's default too.
    assert_matches(image, as_uint8(expected))


def test_the_refiner_refuses_text_to_image(refiner: TextToImagePipeline) -> None:
    with pytest.raises(ValueError, match="SDXL refiner.*give an input 'image'"):
        refiner.check_inputs([GenerationRequest([PROMPT], seed=1)], GenerationSettings(SIZE, SIZE, STEPS, 5.0))


@pytest.mark.parametrize(("scheduler", "fraction", "guidance_scale", "negative"), [
    ("", 0.8, 5.0, None), ("", 0.5, 6.0, NEGATIVE), ("euler_a", 0.7, 5.0, NEGATIVE), ("dpm++_2m", 0.6, 1.0, None),
])
def test_base_to_refiner_handoff_matches_diffusers(base_with_refiner: TextToImagePipeline,
                                                   tiny_model_dirs: dict[str, Path], refiner_dir: Path,
                                                   scheduler: str, fraction: float, guidance_scale: float,
                                                   negative: str | None) -> None:
    request = GenerationRequest([PROMPT], seed=13, negative_prompts=[negative], high_noise_fraction=fraction)
    [image] = base_with_refiner([request], GenerationSettings(SIZE, SIZE, STEPS, guidance_scale, scheduler))

    expected = ensemble_of_experts(tiny_model_dirs["sdxl"], refiner_dir, scheduler, fraction, 13, guidance_scale,
                                   negative)
    assert_matches(image, expected)


def test_the_step_batcher_runs_both_phases_beside_other_requests(base_with_refiner: TextToImagePipeline,
                                                                 tiny_model_dirs: dict[str, Path],
                                                                 refiner_dir: Path) -> None:
    settings = GenerationSettings(SIZE, SIZE, STEPS, 5.0)
    refined = GenerationRequest([PROMPT], seed=21, high_noise_fraction=0.5)
    plain = GenerationRequest([PROMPT], seed=22)
    batcher = StepBatcher(base_with_refiner, max_images=4)
    outcomes: dict[int, object] = {}
    progress: list[int] = []
    try:
        batcher.submit(refined, settings, lambda outcome: outcomes.__setitem__(0, outcome),
                       on_step=lambda step, steps, *_: progress.append(step))
        batcher.submit(plain, settings, lambda outcome: outcomes.__setitem__(1, outcome))
    finally:
        batcher.close()

    assert_matches(outcomes[0], ensemble_of_experts(tiny_model_dirs["sdxl"], refiner_dir, "", 0.5, 21, 5.0, None))
    [alone] = base_with_refiner([plain], settings)
    assert_matches(outcomes[1], alone)
    # Progress counts both phases as one run of `steps`.
    assert progress == list(range(1, STEPS + 1))
    # The two requests shared the base's UNet calls until the handover.
    assert any(len(record.members) == 2 for record in batcher.trace())


@pytest.mark.parametrize(("fraction", "message"), [
    (0.0, r"high_noise_fraction must be a number in \(0, 1\)"),
    (1.5, r"high_noise_fraction must be a number in \(0, 1\)"),
    (0.01, "leaves the base no step to run"),
    (0.999, "leaves the refiner no step to run"),
])
def test_a_bad_high_noise_fraction_is_refused_naming_it(base_with_refiner: TextToImagePipeline, fraction: float,
                                                        message: str) -> None:
    with pytest.raises(ValueError, match=message):
        base_with_refiner.check_inputs([GenerationRequest([PROMPT], seed=1, high_noise_fraction=fraction)],
                                       GenerationSettings(SIZE, SIZE, STEPS, 5.0))


# ---------------------------------------------------------------------------------------------
# Through a real server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerAddresses]:
    """`tiny_sdxl_refiner` as the repository ships it, and `tiny_sdxl_refined`: tiny_sdxl's config
    with the config parameter `refiner` naming it."""
    root = tmp_path_factory.mktemp("refiner_server")
    configs = PROJECT_ROOT / "model_repository"
    refiner = root / "tiny_sdxl_refiner"
    refiner.mkdir()
    (refiner / "config.pbtxt").write_text((configs / "tiny_sdxl_refiner" / "config.pbtxt").read_text())
    make_tiny_model(refiner / "1", "sdxl_refiner", seed=0)
    base = root / "tiny_sdxl_refined"
    base.mkdir()
    config = (configs / "tiny_sdxl" / "config.pbtxt").read_text()
    (base / "config.pbtxt").write_text(config.replace(
        "parameters [", 'parameters [\n  {\n    key: "refiner"\n    value: { string_value: "tiny_sdxl_refiner" }\n  },', 1))
    make_tiny_model(base / "1", "sdxl", seed=0)
    repository = make_repository(root / "repo", {"tiny_sdxl_refiner": refiner, "tiny_sdxl_refined": base})
    with serving(repository) as addresses:
        yield addresses


def test_the_server_runs_the_refiner_as_diffusers_does(server: ServerAddresses, refiner_dir: Path) -> None:
    init = picture(5, SIZE)
    status, reply = http_json(server, "POST", "/v2/models/tiny_sdxl_refiner/generate", {
        "prompt": PROMPT, "negative_prompt": NEGATIVE, "image": png_base64(init), "steps": STEPS, "seed": 8,
        "aesthetic_score": 7.0, "negative_aesthetic_score": 2.0, "strength": 0.5})
    assert status == 200, reply

    expected = diffusers_pipeline(StableDiffusionXLImg2ImgPipeline, refiner_dir, "")(
        PROMPT, image=init, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=5.0, strength=0.5,
        aesthetic_score=7.0, negative_aesthetic_score=2.0, generator=torch.Generator("cpu").manual_seed(8),
        output_type="np",
    ).images
    assert_matches(generated_pixels(reply)[np.newaxis], as_uint8(expected))


def test_the_server_hands_the_base_s_latents_to_the_refiner(server: ServerAddresses,
                                                            tiny_model_dirs: dict[str, Path], refiner_dir: Path) -> None:
    status, reply = http_json(server, "POST", "/v2/models/tiny_sdxl_refined/generate", {
        "prompt": PROMPT, "steps": STEPS, "seed": 31, "height": SIZE, "width": SIZE, "high_noise_fraction": 0.6})
    assert status == 200, reply

    assert_matches(generated_pixels(reply)[np.newaxis], ensemble_of_experts(tiny_model_dirs["sdxl"], refiner_dir, "", 0.6, 31, 5.0, None))


def test_the_models_declare_their_parameters(server: ServerAddresses) -> None:
    status, refiner = http_json(server, "GET", "/v2/models/tiny_sdxl_refiner/capabilities")
    assert status == 200, refiner
    assert isinstance(refiner, dict) and refiner["tasks"] == ["image_to_image", "inpaint"]
    assert refiner["parameters"]["aesthetic_score"]["default"] == 6.0
    assert refiner["parameters"]["negative_aesthetic_score"]["default"] == 2.5
    assert "high_noise_fraction" not in refiner["parameters"]
    status, base = http_json(server, "GET", "/v2/models/tiny_sdxl_refined/capabilities")
    assert status == 200, base
    assert isinstance(base, dict) and base["parameters"]["high_noise_fraction"]["default"] == 0.8
    assert "aesthetic_score" not in base["parameters"]


@pytest.mark.parametrize(("model", "body", "message"), [
    ("tiny_sdxl_refiner", {}, "this is an SDXL refiner, which refines an image: give an input 'image'"),
    ("tiny_sdxl_refiner", {"aesthetic_score": 11}, "aesthetic_score"),
    ("tiny_sdxl_refiner", {"high_noise_fraction": 0.5}, "high_noise_fraction"),
    ("tiny_sdxl_refined", {"aesthetic_score": 7}, "aesthetic_score"),
    ("tiny_sdxl_refined", {"high_noise_fraction": 1.5}, "high_noise_fraction"),
    ("tiny_sdxl_refined", {"high_noise_fraction": 0.01}, "leaves the base no step to run"),
    ("tiny_sdxl_refined", {"high_noise_fraction": 0.5, "image": "IMAGE"}, "applies to text-to-image"),
], ids=["refiner-text-to-image", "aesthetic-range", "fraction-on-refiner", "aesthetic-on-base", "fraction-range",
        "fraction-no-base-step", "fraction-with-image"])
def test_bad_refiner_requests_are_a_400_naming_the_problem(server: ServerAddresses, model: str, body: dict,
                                                           message: str) -> None:
    if body.get("image") == "IMAGE":
        body = {**body, "image": png_base64(picture(1, SIZE))}
    status, reply = http_json(server, "POST", f"/v2/models/{model}/generate",
                              {"prompt": PROMPT, "steps": STEPS, "height": SIZE, "width": SIZE, **body})
    assert status == 400, reply
    assert message in str(reply)


def test_a_base_model_holds_one_copy_of_what_its_refiner_shares_with_it(tiny_model_dirs: dict[str, Path],
                                                                         refiner_dir: Path, tmp_path: Path) -> None:
    from sdserve_backend.backends.diffusion.model import TritonPythonModel

    (tmp_path / "base").symlink_to(tiny_model_dirs["sdxl"].parent)
    (tmp_path / "tiny_refiner").mkdir()
    (tmp_path / "tiny_refiner" / "1").symlink_to(refiner_dir)
    values = {"refiner": "tiny_refiner", "high_noise_fraction": "0.6", "step_batching": "false"}
    config = {"name": "base", "max_batch_size": 2, "parameters": {key: {"string_value": value} for key, value in values.items()}}
    model = TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(tmp_path / "base"),
                      "model_version": tiny_model_dirs["sdxl"].name, "model_name": "base",
                      "model_instance_kind": "CPU", "model_instance_device_id": "0"})
    try:
        base, refiner = model.pipeline.components, model.pipeline.refiner
        assert refiner is not None and refiner.requires_aesthetics_score
        # The tiny refiner's second text encoder and VAE are tiny_sdxl's, as the published ones are.
        assert refiner.text_encoder_2 is base.text_encoder_2 and refiner.vae is base.vae
        assert refiner.unet is not base.unet
        assert model.capabilities()["parameters"]["high_noise_fraction"]["default"] == 0.6
        assert model.capabilities()["refiner"] == "tiny_refiner"
    finally:
        model.finalize()
