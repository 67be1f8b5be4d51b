"""Prompts longer than CLIP's 77-token window: chunked and concatenated by default, cut with a
warning when chunking is off; on the tiny SD and SDXL models."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import torch
import triton_python_backend_utils as pb_utils

from sdserve_backend.backends.diffusion.model import TritonPythonModel
from sdserve_backend.pipelines import GenerationRequest, GenerationSettings, StepBatcher, TextToImagePipeline

PipelineLoader = Callable[[str], TextToImagePipeline]
SETTINGS = GenerationSettings(64, 64, 2, 7.5, "euler")
# Two tokens per repeat in the tiny models' vocabulary: 60 tokens, then the tails past 75.
HEAD = "a cat " * 30
LONG = HEAD + "a dog " * 10 + "the moon"
OTHER_LONG = HEAD + "a dog " * 10 + "the sun"


def differs(a: np.ndarray, b: np.ndarray) -> bool:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) > 2


@pytest.mark.parametrize("variant", ["sd", "sdxl"])
def test_a_long_prompt_is_encoded_in_chunks_of_77_and_the_negative_is_padded_to_match(
    variant: str, load_tiny_pipeline: PipelineLoader
) -> None:
    encoder = load_tiny_pipeline(variant).prompt_encoder

    long = encoder.encode([LONG], ["blurry"], classifier_free_guidance=True)
    short = encoder.encode(["a cat"], ["blurry"], classifier_free_guidance=True)
    cut = encoder.encode([LONG], ["blurry"], classifier_free_guidance=True, chunked=False)

    assert encoder.chunk_count([LONG]) == 2 and encoder.truncated_prompts([LONG, "a cat"]) == [LONG]
    assert long.positive.shape[1] == long.negative.shape[1] == 154
    assert short.positive.shape[1] == cut.positive.shape[1] == 77
    # The first chunk is the prompt's first 75 tokens, encoded as a short prompt is.
    torch.testing.assert_close(long.positive[:, :77], cut.positive, rtol=1e-5, atol=1e-5)
    # The negative's second chunk is the empty prompt's encoding.
    empty = encoder.encode([""], [None], classifier_free_guidance=False)
    torch.testing.assert_close(long.negative[:, 77:], empty.positive, rtol=1e-5, atol=1e-5)
    if variant == "sdxl":
        # The pooled embedding comes from the first chunk.
        torch.testing.assert_close(long.pooled_positive, cut.pooled_positive, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["sd", "sdxl"])
def test_words_past_the_77th_token_change_the_image_unless_chunking_is_off(
    variant: str, load_tiny_pipeline: PipelineLoader
) -> None:
    pipeline = load_tiny_pipeline(variant)

    [moon], [sun] = pipeline([GenerationRequest([LONG], seed=1)], SETTINGS), pipeline([GenerationRequest([OTHER_LONG], seed=1)], SETTINGS)
    [moon_cut] = pipeline([GenerationRequest([LONG], seed=1, chunk_prompts=False)], SETTINGS)
    [sun_cut] = pipeline([GenerationRequest([OTHER_LONG], seed=1, chunk_prompts=False)], SETTINGS)

    assert differs(moon, sun)
    assert np.array_equal(moon_cut, sun_cut)


def test_long_and_short_prompts_run_in_one_call_and_the_step_batcher_keeps_them_apart(
    load_tiny_pipeline: PipelineLoader,
) -> None:
    pipeline = load_tiny_pipeline("sd")
    long, short = GenerationRequest([LONG], seed=3), GenerationRequest(["a cat"], seed=4)

    both = pipeline([long, short], SETTINGS)
    [long_alone], [short_alone] = pipeline([long], SETTINGS), pipeline([short], SETTINGS)

    batcher = StepBatcher(pipeline, max_images=4)
    outcomes: list[Future[np.ndarray]] = [Future(), Future()]
    try:
        for request, outcome in zip((long, short), outcomes, strict=True):
            batcher.submit(request, SETTINGS, lambda result, outcome=outcome: outcome.set_result(result))
        stepped = [outcome.result(120) for outcome in outcomes]
        calls = [len(record.members) for record in batcher.trace()]
    finally:
        batcher.close()

    # (Decoded together, up to the rounding of a batched VAE call.)
    for images in (both, stepped):
        assert not differs(images[0], long_alone) and not differs(images[1], short_alone)
    # Their text conditioning differs in length: they never share a UNet call.
    assert calls == [1, 1, 1, 1]


def test_the_model_warns_in_the_response_when_it_cuts_a_prompt(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    repository = tmp_path / "tiny_sd"
    shutil.copytree(tiny_model_dirs["sd"], repository / "1")
    values = {"image_height": "64", "image_width": "64", "steps": "1", "step_batching": "false", "prompt_chunking": "false"}
    config = {"name": "tiny_sd", "max_batch_size": 4, "parameters": {key: {"string_value": value} for key, value in values.items()}}
    model = TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(repository), "model_version": "1",
                      "model_name": "tiny_sd", "model_instance_kind": "CPU", "model_instance_device_id": "0"})
    try:
        assert model.capabilities()["parameters"]["prompt_chunking"] == {"type": "boolean", "default": False}

        def request(prompt: str, parameters: dict[str, object]) -> pb_utils.InferenceRequest:
            tensor = pb_utils.Tensor("prompt", np.array([[prompt.encode()]], dtype=np.object_))
            return pb_utils.InferenceRequest([tensor], request_id=prompt, parameters={"seed": 1, **parameters})

        cut, chunked, short = model.execute([request(LONG, {}), request(LONG, {"prompt_chunking": "True"}), request("a cat", {})])

        assert json.loads(cut.parameters())["warning"] == (
            "1 prompt(s) longer than CLIP's 75 tokens were cut to their first 75 tokens (prompt_chunking is false)"
        )
        assert "warning" not in json.loads(chunked.parameters()) and "warning" not in json.loads(short.parameters())
        [bad] = model.execute([request("a cat", {"prompt_chunking": "yes"})])
        assert bad.error().message() == "parameter 'prompt_chunking' must be \"true\" or \"false\", got 'yes'"
        [too_long] = model.execute([request("a cat " * 400, {"prompt_chunking": True})])
        assert json.loads(too_long.parameters())["warning"] == (
            "1 prompt(s) longer than 600 tokens (8 chunks of 75) were cut to their first 600 tokens"
        )
        image = pb_utils.get_output_tensor_by_name(too_long, "generated_image").as_numpy()
        assert image.shape == (1, 64, 64, 3)
    finally:
        model.finalize()
