"""OpenAI's official Python client as a peer of a real sdserve: the /v1 images and models routes."""
from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import numpy as np
import openai
import pytest
from PIL import Image

from sdserve_server import ServerAddresses, http_json, serve_tiny_sd_and_add_sub

FAST = {"steps": 1, "seed": 11}


class AnyInt:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, int)


ANY_INT = AnyInt()


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



def test_models_lists_the_ready_text_to_image_models(client: openai.OpenAI, server: ServerAddresses) -> None:
    # add_sub is ready too, but has no prompt input.
    assert [model.id for model in client.models.list()] == ["tiny_sd"]
    status, body = http_json(server, "GET", "/v1/models")
    assert status == 200
    assert body == {"object": "list", "data": [{"id": "tiny_sd", "object": "model", "created": ANY_INT, "owned_by": "sdserve"}]}


def test_images_generate_returns_n_seeded_pngs_of_the_asked_size(client: openai.OpenAI) -> None:
    result = client.images.generate(model="tiny_sd", prompt="a red fox in the snow", n=2, size="64x96", extra_body=FAST)
    images = [decoded(item.b64_json) for item in result.data]
    assert [image.shape for image in images] == [(96, 64, 3), (96, 64, 3)]
    assert not np.array_equal(images[0], images[1])  # two draws from the request's generator
    again = client.images.generate(model="tiny_sd", prompt="a red fox in the snow", n=2, size="64x96", extra_body=FAST)
    assert [item.b64_json for item in again.data] == [item.b64_json for item in result.data]


@pytest.mark.parametrize("negative_prompt", ["fog", "rain"])
def test_images_match_the_generate_extension_for_the_same_request(
    client: openai.OpenAI, server: ServerAddresses, negative_prompt: str
) -> None:
    extra = {**FAST, "negative_prompt": negative_prompt, "guidance_scale": 3.0}
    result = client.images.generate(prompt="a lighthouse", size="64x64", extra_body=extra)  # no model: the only one
    status, body = http_json(server, "POST", "/v2/models/tiny_sd/generate",
                             {"prompt": "a lighthouse", "width": 64, "height": 64, **extra})
    assert status == 200
    image = decoded(result.data[0].b64_json)
    np.testing.assert_array_equal(image, decoded(body["generated_image"][0]))  # type: ignore[index]
    # ...and the fields reach the model: another negative prompt or guidance scale draws another image.
    other = client.images.generate(prompt="a lighthouse", size="64x64", extra_body={**extra, "guidance_scale": 6.0})
    assert not np.array_equal(image, decoded(other.data[0].b64_json))
    if negative_prompt == "rain":
        fog = client.images.generate(prompt="a lighthouse", size="64x64", extra_body={**extra, "negative_prompt": "fog"})
        assert not np.array_equal(image, decoded(fog.data[0].b64_json))


def test_size_auto_keeps_the_model_default(client: openai.OpenAI) -> None:
    result = client.images.generate(model="tiny_sd", prompt="a cat", size="auto", extra_body=FAST)  # type: ignore[arg-type]
    assert decoded(result.data[0].b64_json).shape == (128, 128, 3)  # tiny_sd's image_height / image_width


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"response_format": "url"}, 'response_format "url" is not supported'),
        ({"quality": "hd"}, 'unsupported field "quality"'),
        ({"n": 11}, "/n must be <= 10"),
        ({"n": 5}, "model 'tiny_sd' makes 1 to 4 image(s) per request, 5 were asked for"),  # tiny_sd's max_batch_size
        ({"size": "1024"}, "/size must match pattern"),
        ({"model": "add_sub"}, "model 'add_sub' is not a text-to-image model"),
        ({"extra_body": {**FAST, "scheduler": "bogus"}}, "request parameter 'scheduler' must be one of"),
        ({"extra_body": {**FAST, "seed": 2**60}}, "/seed must be <= 9007199254740991"),
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


def test_an_unknown_model_is_openai_s_404_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.images.generate(model="nope", prompt="a cat", extra_body=FAST)
    assert "unknown model: 'nope'" in raised.value.message
    assert isinstance(raised.value.body, dict) and raised.value.body["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "/v1/images/generations", b"[1]", 400, "invalid request body: must be object"),
        ("POST", "/v1/images/generations", {"n": 1}, 400, "must have required property 'prompt'"),
        ("POST", "/v1/images/edits", {"prompt": "a cat"}, 400, "the body must be multipart/form-data"),
        ("GET", "/v1/models/tiny_sd", None, 404, "no route for GET /v1/models/tiny_sd"),
    ],
)
def test_every_v1_error_has_openai_s_shape(
    server: ServerAddresses, method: str, path: str, body: object, status: int, message: str
) -> None:
    got_status, got = http_json(server, method, path, body)
    assert got_status == status
    assert isinstance(got, dict) and set(got) == {"error"}
    assert got["error"]["type"] == "invalid_request_error" and message in got["error"]["message"]
