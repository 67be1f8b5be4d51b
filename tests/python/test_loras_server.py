"""LoRA per request through a real sdserve on the tiny model and its tiny LoRAs, over every front
end: v2 infer (the `loras` parameter as JSON text, with Triton's client), generate (the list
itself), OpenAI's client (`loras` in extra_body) and Automatic1111's `<lora:name:scale>` in the
prompt; unknown names are 400s that list the available ones."""
from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator

import numpy as np
import openai
import pytest
import tritonclient.http as httpclient
from PIL import Image

from sdserve_server import ServerAddresses, http_json, serve_tiny_sd_and_add_sub

FAST = {"steps": 2, "seed": 21, "width": 64, "height": 64}
AVAILABLE = "available: tiny_kohya, tiny_peft, tiny_unet_peft"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerAddresses]:
    yield from serve_tiny_sd_and_add_sub(tmp_path_factory, "loras")



def png(b64: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(b64))) as image:
        return np.asarray(image.convert("RGB"))


def generate(server: ServerAddresses, prompt: str, **parameters: object) -> np.ndarray:
    status, body = http_json(server, "POST", "/v2/models/tiny_sd/generate", {"prompt": prompt, **FAST, **parameters})
    assert status == 200, body
    return png(body["generated_image"][0])


def test_every_front_end_applies_the_same_loras(server: ServerAddresses) -> None:
    chosen = [{"name": "tiny_kohya", "scale": 0.8}, {"name": "tiny_peft", "scale": -0.4}]
    plain = generate(server, "a cat ")
    by_list = generate(server, "a cat ", loras=chosen)
    by_tags = generate(server, "a cat <lora:tiny_kohya:0.8><lora:tiny_peft:-0.4>")
    assert np.abs(plain.astype(int) - by_list.astype(int)).max() > 10
    np.testing.assert_array_equal(by_tags, by_list)

    with httpclient.InferenceServerClient(server.http) as client:
        prompt = httpclient.InferInput("prompt", [1, 1], "BYTES")
        prompt.set_data_from_numpy(np.array([[b"a cat "]], dtype=np.object_))
        result = client.infer("tiny_sd", [prompt], parameters={**FAST, "loras": json.dumps(chosen)},
                              outputs=[httpclient.InferRequestedOutput("generated_image")])
    np.testing.assert_array_equal(result.as_numpy("generated_image")[0], by_list)

    with openai.OpenAI(base_url=f"http://{server.http}/v1", api_key="unused", max_retries=0) as client:
        images = client.images.generate(model="tiny_sd", prompt="a cat ", size="64x64",
                                        extra_body={"steps": 2, "seed": 21, "loras": chosen})
    np.testing.assert_array_equal(png(images.data[0].b64_json or ""), by_list)


@pytest.mark.parametrize("loras", [
    [{"name": "nope"}],
    [{"name": "../tiny_sd/1/loras/tiny_kohya"}],
])
def test_unknown_or_path_names_are_400s_listing_the_available_loras(server: ServerAddresses, loras: list) -> None:
    status, body = http_json(server, "POST", "/v2/models/tiny_sd/generate", {"prompt": "a cat", **FAST, "loras": loras})
    assert status == 400
    assert AVAILABLE in body["error"]
    with openai.OpenAI(base_url=f"http://{server.http}/v1", api_key="unused", max_retries=0) as client:
        with pytest.raises(openai.BadRequestError, match=AVAILABLE):
            client.images.generate(model="tiny_sd", prompt="a cat", size="64x64", extra_body={"steps": 2, "loras": loras})


@pytest.mark.parametrize(("extra", "message"), [
    ({"loras": [{"name": "tiny_kohya", "scale": 99}]}, "scale must be a number from -10 to 10"),
    ({"loras": "not json"}, "must be a JSON list"),
    ({"prompt": "a cat <lora:tiny_kohya:lots>"}, "scale must be a number"),
])
def test_bad_scales_and_lists_are_400s(server: ServerAddresses, extra: dict, message: str) -> None:
    status, body = http_json(server, "POST", "/v2/models/tiny_sd/generate", {"prompt": "a cat", **FAST, **extra})
    assert status == 400
    assert message in body["error"]


def test_the_png_parameters_text_names_the_loras_as_automatic1111_prompts_do(server: ServerAddresses) -> None:
    status, body = http_json(server, "POST", "/v2/models/tiny_sd/generate",
                             {"prompt": "a cat", **FAST, "loras": [{"name": "tiny_kohya", "scale": 0.8}]})
    assert status == 200, body
    with Image.open(io.BytesIO(base64.b64decode(body["generated_image"][0]))) as image:
        assert image.info["parameters"].startswith("a cat <lora:tiny_kohya:0.8>\n")


def test_image_to_image_requests_take_loras_too(server: ServerAddresses) -> None:
    picture = Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (64, 1, 3)))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    plain = generate(server, "a cat ", image=image, strength=0.6)
    by_list = generate(server, "a cat ", image=image, strength=0.6, loras=[{"name": "tiny_peft", "scale": 0.7}])
    by_tag = generate(server, "a cat <lora:tiny_peft:0.7>", image=image, strength=0.6)
    assert np.abs(plain.astype(int) - by_list.astype(int)).max() > 10
    np.testing.assert_array_equal(by_tag, by_list)
