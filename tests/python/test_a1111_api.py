"""Automatic1111's txt2img API in its own request shape, against a real sdserve on the tiny model:
the images decode to the size and count asked for, a seed gives the same images again, and what
sdserve cannot do is refused with a message."""
from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from sdserve_server import ServerAddresses, http_json, serve_tiny_sd_and_add_sub

# What A1111 clients typically send, fields at A1111's defaults included.
A1111_REQUEST = {
    "prompt": "a red fox in the snow",
    "negative_prompt": "blurry",
    "styles": [],
    "seed": 1234,
    "subseed": -1,
    "subseed_strength": 0,
    "seed_resize_from_h": -1,
    "seed_resize_from_w": -1,
    "sampler_name": "Euler a",
    "scheduler": "Automatic",
    "batch_size": 2,
    "n_iter": 1,
    "steps": 2,
    "cfg_scale": 7,
    "width": 64,
    "height": 48,
    "restore_faces": False,
    "tiling": False,
    "do_not_save_samples": True,
    "do_not_save_grid": True,
    "enable_hr": False,
    "denoising_strength": 0.7,
    "hr_scale": 2,
    "override_settings": {},
    "send_images": True,
    "save_images": False,
    "alwayson_scripts": {},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerAddresses]:
    yield from serve_tiny_sd_and_add_sub(tmp_path_factory, "a1111")



def images_of(body: dict) -> list[np.ndarray]:
    arrays = []
    for encoded in body["images"]:
        with Image.open(io.BytesIO(base64.b64decode(encoded))) as image:
            assert image.format == "PNG"
            arrays.append(np.asarray(image.convert("RGB")))
    return arrays


def test_txt2img_answers_in_a1111_shape_with_the_images_asked_for(server: ServerAddresses) -> None:
    status, body = http_json(server, "POST", "/sdapi/v1/txt2img", A1111_REQUEST)
    assert status == 200, body
    assert isinstance(body, dict) and set(body) == {"images", "parameters", "info"}
    images = images_of(body)
    assert len(images) == 2
    assert all(image.shape == (48, 64, 3) for image in images)
    info = json.loads(body["info"])
    assert info["seed"] == 1234 and info["all_seeds"] == [1234, 1234]
    assert info["sampler_name"] == "Euler a" and info["steps"] == 2 and info["sd_model_name"] == "tiny_sd"
    assert info["infotexts"][0].startswith("a red fox in the snow\nNegative prompt: blurry\nSteps: 2, Sampler: Euler a")
    assert body["parameters"]["seed"] == 1234 and body["parameters"]["batch_size"] == 2


def test_the_same_seed_gives_the_same_images_and_another_seed_others(server: ServerAddresses) -> None:
    request = {**A1111_REQUEST, "batch_size": 1}
    first = images_of(http_json(server, "POST", "/sdapi/v1/txt2img", request)[1])
    again = images_of(http_json(server, "POST", "/sdapi/v1/txt2img", request)[1])
    other = images_of(http_json(server, "POST", "/sdapi/v1/txt2img", {**request, "seed": 99})[1])
    assert np.array_equal(first[0], again[0])
    assert not np.array_equal(first[0], other[0])


def test_n_iter_runs_batches_in_turn_with_the_seed_moved_on(server: ServerAddresses) -> None:
    status, body = http_json(server, "POST", "/sdapi/v1/txt2img", {**A1111_REQUEST, "batch_size": 1, "n_iter": 2})
    assert status == 200, body
    assert len(images_of(body)) == 2
    assert json.loads(body["info"])["all_seeds"] == [1234, 1235]


def test_a_random_seed_is_reported_so_the_image_can_be_made_again(server: ServerAddresses) -> None:
    request = {"prompt": "a lighthouse", "seed": -1, "steps": 1, "width": 32, "height": 32}
    status, body = http_json(server, "POST", "/sdapi/v1/txt2img", request)
    assert status == 200, body
    seed = json.loads(body["info"])["seed"]
    assert 0 <= seed < 2**32
    again = http_json(server, "POST", "/sdapi/v1/txt2img", {**request, "seed": seed})[1]
    assert np.array_equal(images_of(body)[0], images_of(again)[0])


@pytest.mark.parametrize(("change", "message"), [
    ({"cfg_scael": 7}, 'unknown field "cfg_scael" (did you mean "cfg_scale"?)'),
    ({"sampler_name": "Euler A"}, 'unknown sampler "Euler A" (did you mean "Euler a"?)'),
    ({"restore_faces": True}, '"restore_faces": true is not supported'),
    ({"enable_hr": True}, '"enable_hr" (hires fix) is not supported'),
    ({"override_settings": {"sd_model_checkpoint": "add_sub"}}, "'add_sub' is not a text-to-image model"),
])
def test_what_sdserve_cannot_do_is_refused_with_the_reason(server: ServerAddresses, change: dict, message: str) -> None:
    status, body = http_json(server, "POST", "/sdapi/v1/txt2img", {**A1111_REQUEST, **change})
    assert status == 400
    assert isinstance(body, dict) and message in body["error"]


def test_a_batch_larger_than_the_model_takes_is_refused(server: ServerAddresses) -> None:
    status, body = http_json(server, "POST", "/sdapi/v1/txt2img", {"prompt": "a fox", "batch_size": 2086266766533})
    assert status == 400
    assert isinstance(body, dict)
    assert "\"batch_size\" 2086266766533: model 'tiny_sd' makes 1 to 4 image(s) per request" in body["error"]


def test_models_and_samplers_are_listed(server: ServerAddresses) -> None:
    status, models = http_json(server, "GET", "/sdapi/v1/sd-models")
    assert status == 200 and [model["model_name"] for model in models] == ["tiny_sd"]
    status, samplers = http_json(server, "GET", "/sdapi/v1/samplers")
    assert status == 200 and {"Euler a", "DDIM", "DPM++ 2M"} <= {sampler["name"] for sampler in samplers}


def test_samplers_with_their_schedule_in_the_name_and_few_step_lcm_run(server: ServerAddresses) -> None:
    status, samplers = http_json(server, "GET", "/sdapi/v1/samplers")
    assert status == 200 and {"DPM++ 2M Karras", "DPM2 a Karras", "DPM++ SDE Karras", "LCM"} <= {
        sampler["name"] for sampler in samplers}
    for sampler, steps, cfg_scale in (("DPM++ 2M Karras", 3, 7), ("DPM++ 2M SDE Karras", 2, 7), ("DPM++ SDE Karras", 2, 7),
                                      ("LCM", 1, 1)):
        status, body = http_json(server, "POST", "/sdapi/v1/txt2img",
                            {"prompt": "a red fox", "seed": 5, "sampler_name": sampler, "steps": steps,
                             "cfg_scale": cfg_scale, "batch_size": 1, "width": 64, "height": 48})
        assert status == 200, body
        assert isinstance(body, dict) and len(body["images"]) == 1
        assert json.loads(body["info"])["sampler_name"] == sampler
