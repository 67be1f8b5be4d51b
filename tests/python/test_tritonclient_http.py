"""Triton's official HTTP client as a peer of sdserve, the way the seed's client.py uses it."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from sdserve_server import PROJECT_ROOT, running_server


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpclient.InferenceServerClient]:
    repository = tmp_path_factory.mktemp("repo")
    (repository / "tiny_sd").symlink_to(PROJECT_ROOT / "model_repository" / "tiny_sd")
    with running_server(repository) as address:
        yield httpclient.InferenceServerClient(url=address)


def prompt_input(prompts: list[str]) -> httpclient.InferInput:
    text = np.array(prompts, dtype="object").reshape((-1, 1))
    tensor = httpclient.InferInput("prompt", list(text.shape), np_to_triton_dtype(text.dtype))
    tensor.set_data_from_numpy(text)
    return tensor


@pytest.mark.parametrize("binary", [True, False])
def test_infer_returns_an_image_like_the_seed_client_expects(client: httpclient.InferenceServerClient, binary: bool) -> None:
    prompt = prompt_input(["butterfly in new york, 4k, realistic"])
    output = httpclient.InferRequestedOutput("generated_image", binary_data=binary)
    result = client.infer(model_name="tiny_sd", inputs=[prompt], outputs=[output], parameters={"steps": 2, "seed": 3})
    image = result.as_numpy("generated_image")
    assert image.dtype == np.uint8
    assert image.shape == (1, 128, 128, 3)
    assert image.std() > 0


def test_batch_of_two_prompts_with_json_input(client: httpclient.InferenceServerClient) -> None:
    prompt = prompt_input(["a", "b"])
    prompt.set_data_from_numpy(np.array([["a"], ["b"]], dtype=object), binary_data=False)
    result = client.infer(model_name="tiny_sd", inputs=[prompt], parameters={"steps": 1, "seed": 1})
    assert result.as_numpy("generated_image").shape == (2, 128, 128, 3)


def test_health_metadata_and_config(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_model_ready("tiny_sd")
    metadata = client.get_model_metadata("tiny_sd")
    assert metadata["inputs"][0]["name"] == "prompt"
    assert client.get_model_config("tiny_sd")["max_batch_size"] == 4


def test_unknown_model_is_a_client_error(client: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer(model_name="missing", inputs=[prompt_input(["x"])])
