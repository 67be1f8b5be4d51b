"""LoRA per request on the tiny models: the same images as diffusers' `load_lora_weights` with that
scale, in both key layouts, for the UNet and the text encoders of SD and SDXL; requests with
different LoRAs share one UNet batch and each gets the image it gets alone; bad names and scales
are refused with what is available."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from sdserve_backend.backends.diffusion import settings as model_settings
from sdserve_backend.engine.runners import UNetRunner
from sdserve_backend.engine.static_call import BucketedCall
from sdserve_backend.pipelines import (
    GenerationRequest,
    GenerationSettings,
    StepBatcher,
    TextToImagePipeline,
    load_components,
)
from sdserve_backend.pipelines.lora_library import parse_loras_parameter, take_prompt_tags
from sdserve_backend.tiny_lora import make_tiny_loras

TOLERANCE = 2  # uint8 levels
SIZE = 128
STEPS = 4
PROMPT = "a photo of the cat"
TIMEOUT_S = 120

_pipelines: dict[str, TextToImagePipeline] = {}


@pytest.fixture(scope="module")
def lora_dirs(tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loras")
    for variant, folder in tiny_model_dirs.items():
        make_tiny_loras(folder, root / variant)
    return {variant: root / variant for variant in tiny_model_dirs}


@pytest.fixture(scope="module")
def lora_pipeline(tiny_model_dirs: dict[str, Path], lora_dirs: dict[str, Path]) -> Callable[[str], TextToImagePipeline]:
    def load(variant: str) -> TextToImagePipeline:
        if variant not in _pipelines:
            components = load_components(tiny_model_dirs[variant], torch.device("cpu"), torch.float32)
            _pipelines[variant] = TextToImagePipeline(components, lora_dir=lora_dirs[variant])
        return _pipelines[variant]

    return load


def settings(guidance_scale: float = 7.5) -> GenerationSettings:
    return GenerationSettings(SIZE, SIZE, STEPS, guidance_scale)


def request(pipeline: TextToImagePipeline, seed: int, *loras: tuple[str, float], prompt: str = PROMPT) -> GenerationRequest:
    return GenerationRequest(prompts=[prompt], seed=seed, loras=pipeline.loras.choose(tuple(loras)))


def differs(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


@pytest.mark.parametrize("variant", ["sd", "sdxl"])
@pytest.mark.parametrize("name", ["tiny_kohya", "tiny_peft"])
def test_lora_image_matches_diffusers_load_lora_weights(variant: str, name: str, tiny_model_dirs: dict[str, Path],
                                                        lora_dirs: dict[str, Path], lora_pipeline: Callable[[str], TextToImagePipeline]) -> None:
    ours = lora_pipeline(variant)
    scale = 0.7
    image = ours([request(ours, 11, (name, scale))], settings())[0]
    plain = ours([request(ours, 11)], settings())[0]

    pipeline_class = StableDiffusionXLPipeline if variant == "sdxl" else StableDiffusionPipeline
    reference = pipeline_class.from_pretrained(tiny_model_dirs[variant], local_files_only=True)
    reference.set_progress_bar_config(disable=True)
    reference.load_lora_weights(str(lora_dirs[variant]), weight_name=f"{name}.safetensors", adapter_name=name)
    reference.set_adapters([name], [scale])
    expected = reference(PROMPT, num_inference_steps=STEPS, guidance_scale=7.5, height=SIZE, width=SIZE,
                         generator=torch.Generator().manual_seed(11), output_type="np").images
    expected = (expected * 255).round().astype(np.uint8)

    assert differs(image, plain) > 10, "the LoRA must change the image"
    assert differs(image, expected) <= TOLERANCE


@pytest.mark.parametrize("variant", ["sd", "sdxl"])
def test_requests_with_different_loras_share_one_unet_batch_and_get_their_own_images(
        variant: str, lora_pipeline: Callable[[str], TextToImagePipeline]) -> None:
    pipeline = lora_pipeline(variant)
    requests = [
        request(pipeline, 1),
        request(pipeline, 2, ("tiny_kohya", 0.8)),
        request(pipeline, 3, ("tiny_unet_peft", 1.0), ("tiny_peft", -0.5)),
        request(pipeline, 4, ("tiny_kohya", 1.5)),
    ]
    alone = [pipeline([one], settings())[0] for one in requests]

    # The plain pipeline: one batch key, so all four share every UNet call.
    assert len({pipeline.task.batch_key(one, settings()) for one in requests}) == 1
    together = pipeline(requests, settings())

    # The step batcher: they join the running batch as they come, and share its UNet calls.
    batcher = StepBatcher(pipeline, max_images=4)
    try:
        outcomes: list[Future[np.ndarray]] = []
        for one in requests:
            outcome: Future[np.ndarray] = Future()
            outcomes.append(outcome)
            batcher.submit(one, settings(), outcome.set_result)
        stepped = [outcome.result(timeout=TIMEOUT_S) for outcome in outcomes]
        trace = batcher.trace()
    finally:
        batcher.close()

    assert max(len(record.members) for record in trace) == len(requests), "one UNet call held all four requests"
    for expected, batched, joined in zip(alone, together, stepped, strict=True):
        assert not isinstance(joined, Exception)
        assert differs(batched, expected) <= 1
        assert differs(joined, expected) <= 1
    assert differs(alone[1], alone[3]) > 10, "another scale of the same LoRA gives another image"
    assert differs(alone[0], alone[2]) > 10


def test_text_encoder_lora_changes_the_embedding_and_the_prompt_cache_keeps_both(
        lora_pipeline: Callable[[str], TextToImagePipeline]) -> None:
    pipeline = lora_pipeline("sd")
    encoder = pipeline.prompt_encoder
    text = "a text only these tests encode"
    plain = encoder.encode([text], [None], False).positive
    adapted = encoder.encode([text], [None], False, loras=pipeline.loras.choose((("tiny_kohya", 1.0),))).positive
    unet_only = encoder.encode([text], [None], False, loras=pipeline.loras.choose((("tiny_unet_peft", 1.0),))).positive
    again = encoder.encode([text], [None], False).positive

    assert not torch.allclose(plain, adapted)
    assert torch.equal(plain, again)
    assert torch.equal(plain, unet_only), "a UNet-only LoRA leaves the text embedding alone"


def test_prompt_tags_are_taken_out_of_the_prompt() -> None:
    prompts, loras = take_prompt_tags(["a cat <lora:tiny_kohya:0.8>, <lora:tiny_peft>", "a dog"])
    assert prompts == ["a cat , ", "a dog"]
    assert loras == (("tiny_kohya", 0.8), ("tiny_peft", 1.0))
    prompts, loras = model_settings.read_loras('{"loras": "[{\\"name\\": \\"tiny_peft\\", \\"scale\\": 1}]"}',
                                               ["<lora:tiny_kohya:-0.5>x"])
    assert prompts == ["x"] and loras == (("tiny_peft", 1.0), ("tiny_kohya", -0.5))


@pytest.mark.parametrize(("value", "message"), [
    ('[{"name": "tiny_kohya", "scale": "lots"}]', "scale must be a number"),
    ('[{"name": "tiny_kohya", "scale": 50}]', "scale must be a number from -10 to 10"),
    ('[{"name": "tiny_kohya", "weight": 1}]', "each entry must be"),
    ('{"name": "tiny_kohya"}', "must be a list"),
    ("tiny_kohya", "must be a JSON list"),
    ('[{"name": "tiny_kohya", "scale": 1}, {"name": "tiny_kohya", "scale": 0.5}]', "asked for twice"),
])
def test_bad_loras_parameters_are_refused(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_loras_parameter(value)


@pytest.mark.parametrize("name", ["nope", "../tiny_kohya", "/etc/passwd", "loras/tiny_kohya", "tiny_kohya.safetensors", ".."])
def test_unknown_or_path_like_names_are_refused_with_the_available_ones(
        name: str, lora_pipeline: Callable[[str], TextToImagePipeline]) -> None:
    with pytest.raises(ValueError, match="available: tiny_kohya, tiny_peft, tiny_unet_peft"):
        lora_pipeline("sd").loras.choose(((name, 1.0),))


def test_a_lora_of_another_model_is_refused(lora_dirs: dict[str, Path], tiny_model_dirs: dict[str, Path],
                                            lora_pipeline: Callable[[str], TextToImagePipeline]) -> None:
    pipeline = lora_pipeline("sd")
    foreign = lora_dirs["sd"] / "from_sdxl.safetensors"
    foreign.write_bytes((lora_dirs["sdxl"] / "tiny_kohya.safetensors").read_bytes())
    try:
        with pytest.raises(ValueError, match="from_sdxl.safetensors"):
            pipeline.loras.choose((("from_sdxl", 1.0),))
    finally:
        foreign.unlink()


def test_fused_qkv_and_the_engine_runner_apply_the_same_loras(
        tiny_model_dirs: dict[str, Path], lora_dirs: dict[str, Path],
        lora_pipeline: Callable[[str], TextToImagePipeline]) -> None:
    """What the engine does to the UNet on a GPU, on the CPU: QKV projections fused into one, and a
    runner that pads rows to a bucket (here without CUDA graphs); rows with LoRAs run its LoRA
    graphs (slot tables, `test_lora_slots.py`), and the fused projections take the q/k/v updates in
    their slices."""
    plain = lora_pipeline("sd")
    components = load_components(tiny_model_dirs["sd"], torch.device("cpu"), torch.float32)
    unet = components.unet
    unet.fuse_qkv_projections()
    runner = UNetRunner(unet, "default")
    latent = SIZE // components.vae_scale_factor
    example = {"sample": torch.zeros((1, 4, latent, latent)), "timestep": torch.zeros((1,)),
               "encoder_hidden_states": torch.zeros((1, 77, int(unet.config.cross_attention_dim)))}
    runner.calls[(latent, latent)] = BucketedCall(runner.run_captured, example, (2, 4, 8), use_graphs=False)
    engine_like = TextToImagePipeline(dataclasses.replace(components, unet=runner), lora_dir=lora_dirs["sd"])

    for loras in ((), (("tiny_kohya", 0.8),), (("tiny_unet_peft", 1.0), ("tiny_peft", 0.3))):
        expected = plain([request(plain, 5, *loras)], settings())[0]
        image = engine_like([request(engine_like, 5, *loras)], settings())[0]
        assert differs(image, expected) <= 1, loras
    assert any(name.endswith("attn1.to_qkv") for name, _ in unet.named_modules()), "the sites are the fused layers"
