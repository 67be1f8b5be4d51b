"""OpenAI's official Python client as a peer of a real sdserve: the /v1 images and models routes."""
from __future__ import annotations

import base64
import io
import json
import urllib.request
from collections.abc import Iterator

import numpy as np
import openai
import pytest
from PIL import Image

from sdserve_server import ServerAddresses, serve_tiny_sd_and_add_sub

FAST = {"steps": 1, "seed": 11}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerAddresses]:
    yield from serve_tiny_sd_and_add_sub(tmp_path_factory, "openai")


@pytest.fixture(scope="module")
def client(server: ServerAddresses) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"http://{server.http}/v1", api_key="unused", max_retries=0) as client:
        yield client


def decoded(b64_png: str | None) -> np.ndarray:
    assert b64_png is not None
    with Image.open(io.BytesIO(base64.b64decode(b64_png))) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def test_models_lists_the_ready_text_to_image_models(client: openai.OpenAI) -> None:
    # add_sub is ready too, but has no prompt input.
    assert [model.id for model in client.models.list()] == ["tiny_sd"]


def test_images_generate_returns_n_seeded_pngs_of_the_asked_size(client: openai.OpenAI) -> None:
    result = client.images.generate(model="tiny_sd", prompt="a red fox in the snow", n=2, size="64x96", extra_body=FAST)
    images = [decoded(item.b64_json) for item in result.data]
    assert [image.shape for image in images] == [(96, 64, 3), (96, 64, 3)]
    assert not np.array_equal(images[0], images[1])  # two draws from the request's generator
    again = client.images.generate(model="tiny_sd", prompt="a red fox in the snow", n=2, size="64x96", extra_body=FAST)
    assert [item.b64_json for item in again.data] == [item.b64_json for item in result.data]


def test_images_match_the_generate_extension_for_the_same_request(
    client: openai.OpenAI, server: ServerAddresses
) -> None:
    result = client.images.generate(prompt="a lighthouse", size="64x64",  # no model: the only text-to-image one
                                    extra_body={**FAST, "negative_prompt": "fog", "guidance_scale": 3.0})
    body = json.dumps({"prompt": "a lighthouse", "negative_prompt": "fog", "width": 64, "height": 64,
                       "guidance_scale": 3.0, **FAST}).encode()
    request = urllib.request.Request(f"http://{server.http}/v2/models/tiny_sd/generate", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        generated = json.load(response)["generated_image"]
    np.testing.assert_array_equal(decoded(result.data[0].b64_json), decoded(generated[0]))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"response_format": "url"}, 'response_format "url" is not supported'),
        ({"quality": "hd"}, 'unsupported field "quality"'),
        ({"n": 11}, "/n must be <= 10"),
        ({"n": 5}, "batch-size must be <= 4"),  # tiny_sd's max_batch_size
        ({"size": "1024"}, "/size must match pattern"),
        ({"model": "nope"}, "unknown model: 'nope'"),
        ({"model": "add_sub"}, "model 'add_sub' has no BYTES input \"prompt\""),
        ({"extra_body": {"scheduler": "bogus"}}, "scheduler 'bogus' is not supported"),
    ],
)
def test_bad_requests_get_a_400_in_openai_error_shape_and_the_server_keeps_serving(
    client: openai.OpenAI, arguments: dict[str, object], message: str
) -> None:
    call = {"model": "tiny_sd", "prompt": "a cat", "extra_body": FAST, **arguments}
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.generate(**call)  # type: ignore[call-overload]
    assert message in raised.value.message
    assert isinstance(raised.value.body, dict) and raised.value.body["type"] == "invalid_request_error"
    assert len(client.images.generate(model="tiny_sd", prompt="a cat", size="64x64", extra_body=FAST).data) == 1
