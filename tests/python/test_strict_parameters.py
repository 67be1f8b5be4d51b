"""One generation contract on every front end, against a real sdserve on the tiny model: a request
parameter the model does not declare is refused naming it, with what was meant and the accepted
ones (v2 infer over HTTP JSON and binary and over gRPC, generate, generate_stream, OpenAI), values
are held to their declared ranges, and images come back in the output format asked for."""
from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from sdserve_server import ServerAddresses, serve_tiny_sd_and_add_sub

TYPO = "did you mean 'guidance_scale'?"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerAddresses]:
    yield from serve_tiny_sd_and_add_sub(tmp_path_factory, "strict")


def post(server: ServerAddresses, path: str, body: object, content_type: str = "application/json",
         raw: bytes | None = None) -> tuple[int, Any, str]:
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{server.http}{path}", data=data, method="POST",
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            text = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as error:
        text = error.read().decode()
        status = error.code
    try:
        return status, json.loads(text), text
    except json.JSONDecodeError:
        return status, None, text


def check_refusal(message: str) -> None:
    assert "model 'tiny_sd' has no request parameter 'guidance'" in message
    assert TYPO in message
    assert "accepted parameters:" in message and "steps" in message and "priority" in message


@pytest.mark.parametrize("binary", [True, False])
def test_v2_infer_over_http_refuses_an_unknown_parameter(server: ServerAddresses, binary: bool) -> None:
    with httpclient.InferenceServerClient(server.http) as client:
        prompt = httpclient.InferInput("prompt", [1, 1], "BYTES")
        prompt.set_data_from_numpy(np.array([[b"a fox"]], dtype=object), binary_data=binary)
        with pytest.raises(InferenceServerException) as raised:
            client.infer("tiny_sd", [prompt], parameters={"guidance": 2, "steps": 1})
    assert raised.value.status() == "400"
    check_refusal(raised.value.message())


def test_v2_infer_over_grpc_refuses_an_unknown_parameter(server: ServerAddresses) -> None:
    client = grpcclient.InferenceServerClient(server.grpc)
    try:
        prompt = grpcclient.InferInput("prompt", [1, 1], "BYTES")
        prompt.set_data_from_numpy(np.array([[b"a fox"]], dtype=object))
        with pytest.raises(InferenceServerException) as raised:
            client.infer("tiny_sd", [prompt], parameters={"guidance": 2, "steps": 1})
    finally:
        client.close()
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    check_refusal(raised.value.message())


@pytest.mark.parametrize("route", ["generate", "generate_stream"])
def test_generate_refuses_an_unknown_parameter(server: ServerAddresses, route: str) -> None:
    status, body, text = post(server, f"/v2/models/tiny_sd/{route}", {"prompt": "a fox", "guidance": 2, "steps": 1})
    if route == "generate":
        assert status == 400
        check_refusal(body["error"])
    else:
        # the stream has begun when the model answers: the refusal is its one event
        assert status == 200
        check_refusal(json.loads(text.split("data: ", 1)[1])["error"])


def test_openai_refuses_an_unknown_field_with_what_was_meant(server: ServerAddresses) -> None:
    status, body, _ = post(server, "/v1/images/generations", {"prompt": "a fox", "guidanse_scale": 2})
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert '"guidanse_scale" (did you mean "guidance_scale"?)' in body["error"]["message"]


@pytest.mark.parametrize(("parameters", "message"), [
    ({"steps": 0}, "request parameter 'steps' must be between 1 and"),
    ({"width": 100}, "request parameter 'width' must be a multiple of 8, got 100"),
    ({"scheduler": "eulr"}, "(did you mean 'euler'?)"),
    ({"preview": "yes"}, "request parameter 'preview' must be a boolean (true or false) or an integer"),
])
def test_values_are_held_to_their_declared_ranges(server: ServerAddresses, parameters: dict, message: str) -> None:
    status, body, _ = post(server, "/v2/models/tiny_sd/generate", {"prompt": "a fox", **parameters})
    assert status == 400
    assert message in body["error"]


def test_booleans_parse_one_way_on_every_front_end(server: ServerAddresses) -> None:
    status, body, _ = post(server, "/v2/models/tiny_sd/generate", {"prompt": "a fox", "steps": 1, "seed": 3, "preview": "False"})
    assert status == 200, body


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


@pytest.mark.parametrize("output_format", ["png", "jpeg", "webp"])
def test_generate_and_openai_give_the_output_format_asked_for(server: ServerAddresses, output_format: str) -> None:
    common = {"prompt": "a fox", "steps": 1, "seed": 5}
    status, body, _ = post(server, "/v2/models/tiny_sd/generate",
                           {**common, "output_format": output_format, "output_compression": 80})
    assert status == 200, body
    image = decode(body["generated_image"][0])
    assert image.format == output_format.upper()
    status, body, _ = post(server, "/v1/images/generations",
                           {**common, "model": "tiny_sd", "output_format": output_format, "size": "64x64"})
    assert status == 200, body
    assert body["output_format"] == output_format
    image = decode(body["data"][0]["b64_json"])
    assert image.format == output_format.upper() and image.size == (64, 64)


def test_a_png_carries_its_generation_parameters(server: ServerAddresses) -> None:
    status, body, _ = post(server, "/v2/models/tiny_sd/generate", {"prompt": "a fox", "steps": 1, "seed": 5})
    assert status == 200, body
    assert "Seed: 5" in decode(body["generated_image"][0]).info["parameters"]


def test_multipart_bodies_on_v1_hear_what_is_supported(server: ServerAddresses) -> None:
    # images/edits takes multipart (OpenAI's form); images/generations takes JSON only.
    status, body, _ = post(server, "/v1/images/generations", None, content_type="multipart/form-data; boundary=x",
                           raw=b"--x\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nfox\r\n--x--\r\n")
    assert 400 <= status < 500
    assert body["error"]["type"] == "invalid_request_error"
    assert "application/json" in body["error"]["message"]


def test_the_fast_modes_are_request_parameters_held_to_their_ranges(server: ServerAddresses) -> None:
    common = {"prompt": "a fox", "steps": 4, "seed": 5}
    exact_status, exact, _ = post(server, "/v2/models/tiny_sd/generate", common)
    neutral_status, neutral, _ = post(server, "/v2/models/tiny_sd/generate",
                                      {**common, "guidance_start": 0, "guidance_end": 1, "cache_interval": 1})
    fast_status, fast, _ = post(server, "/v2/models/tiny_sd/generate",
                                {**common, "guidance_start": 0.25, "guidance_end": 0.75, "cache_interval": 2})
    assert (exact_status, neutral_status, fast_status) == (200, 200, 200), (exact, neutral, fast)
    assert neutral["generated_image"] == exact["generated_image"]
    assert fast["generated_image"] != exact["generated_image"]
    status, body, _ = post(server, "/v2/models/tiny_sd/generate", {**common, "guidance_end": 1.5})
    assert status == 400
    assert "request parameter 'guidance_end' must be between 0 and 1, got 1.5" in body["error"]
    status, body, _ = post(server, "/v2/models/tiny_sd/generate", {**common, "cache_interval": 0})
    assert status == 400
    assert "request parameter 'cache_interval' must be between 1 and" in body["error"]
    status, body, _ = post(server, "/v2/models/tiny_sd/generate", {**common, "guidance_start": 0.8, "guidance_end": 0.2})
    assert status == 400
    assert "0 <= guidance_start <= guidance_end <= 1, got 0.8 and 0.2" in body["error"]
