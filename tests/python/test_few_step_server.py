"""Few-step models and the DPM++ SDE schedulers through a real server: a Turbo model whose config
sets no steps or guidance declares the defaults its weights call for (1 step, guidance 0) and a
request that names neither gets them; dpm++_sde_karras reproduces an image from its seed; bad
few-step settings are a 400 naming the problem. The images equal the in-process pipeline's
(which equal diffusers', tests/python/test_few_step_models.py)."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdserve_backend.pipelines import GenerationRequest, GenerationSettings, TextToImagePipeline, load_components
from sdserve_backend.tiny_model import make_tiny_model
from sdserve_server import PROJECT_ROOT, ServerAddresses, http_json, serving

MODEL = "tiny_turbo"
SIZE = 64
PROMPT = "a photo of the cat"


def turbo_config() -> str:
    """tiny_sd's config.pbtxt at 64x64 without steps or guidance_scale: the weights choose them."""
    config = (PROJECT_ROOT / "model_repository" / "tiny_sd" / "config.pbtxt").read_text()
    for key in ("steps", "guidance_scale"):
        config = re.sub(r'\{\s*key: "' + key + r'"\s*value: \{ string_value: "[^"]*" \}\s*\},?', "", config)
    config = config.replace('string_value: "128"', f'string_value: "{SIZE}"').replace('"1.5"', '""')
    assert '"steps"' not in config and '"guidance_scale"' not in config
    return config


@pytest.fixture(scope="module")
def turbo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("few_step_server") / "repo" / MODEL
    make_tiny_model(folder / "1", "sd-turbo", seed=0)
    (folder / "config.pbtxt").write_text(turbo_config())
    return folder


@pytest.fixture(scope="module")
def server(turbo_dir: Path) -> Iterator[ServerAddresses]:
    with serving(turbo_dir.parent) as addresses:
        yield addresses


@pytest.fixture(scope="module")
def pipeline(turbo_dir: Path) -> TextToImagePipeline:
    return TextToImagePipeline(load_components(turbo_dir / "1", torch.device("cpu"), torch.float32))


def generate(server: ServerAddresses, **fields: object) -> tuple[np.ndarray, dict[str, str]]:
    status, reply = http_json(server, "POST", f"/v2/models/{MODEL}/generate", {"prompt": PROMPT, **fields})
    assert status == 200, reply
    [encoded] = reply["generated_image"]  # type: ignore[index]
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as made:
        return np.asarray(made)[np.newaxis], dict(made.text)


def test_a_turbo_model_declares_one_step_without_guidance_and_a_bare_request_gets_it(
        server: ServerAddresses, pipeline: TextToImagePipeline) -> None:
    status, declared = http_json(server, "GET", f"/v2/models/{MODEL}/capabilities")
    assert status == 200, declared
    parameters = declared["parameters"]  # type: ignore[index]
    assert (parameters["steps"]["default"], parameters["guidance_scale"]["default"]) == (1, 0)

    image, text = generate(server, seed=4)

    assert "Steps: 1, Sampler: Euler a, CFG scale: 0" in text["parameters"], text
    expected = pipeline([GenerationRequest(prompts=[PROMPT], seed=4)], GenerationSettings(SIZE, SIZE, 1, 0.0))[0]
    assert np.array_equal(image, expected)


def test_dpm_sde_karras_reproduces_an_image_from_its_seed(server: ServerAddresses, pipeline: TextToImagePipeline) -> None:
    fields = {"scheduler": "dpm++_sde_karras", "steps": 3, "guidance_scale": 5.0}
    first, _ = generate(server, seed=21, **fields)
    again, _ = generate(server, seed=21, **fields)
    other, _ = generate(server, seed=22, **fields)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    expected = pipeline([GenerationRequest(prompts=[PROMPT], seed=21)],
                        GenerationSettings(SIZE, SIZE, 3, 5.0, "dpm++_sde_karras"))[0]
    assert np.abs(first.astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize(("fields", "message"), [
    ({"scheduler": "lcm", "steps": 60}, "steps must be an integer from 1 to 50 with scheduler 'lcm', got 60"),
    ({"scheduler": "dpm++_sde_karras_fast"}, "dpm++_sde_karras_fast"),
    ({"guidance_scale": -1}, "guidance_scale"),
    ({"steps": 0}, "steps"),
], ids=["lcm-steps", "unknown-scheduler", "negative-guidance", "zero-steps"])
def test_bad_few_step_settings_are_a_400_naming_the_problem(server: ServerAddresses, fields: dict, message: str) -> None:
    status, reply = http_json(server, "POST", f"/v2/models/{MODEL}/generate", {"prompt": PROMPT, **fields})
    assert status == 400, reply
    assert message in reply["error"]  # type: ignore[index]
