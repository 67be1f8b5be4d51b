"""The built-in shapes_sd model through the real server: its images say what their prompts say.

The images are judged by the rule-based checker of training/ (nearest palette colour per pixel,
shape from the object's mask, relations from centroids), on the CPU, with few steps to stay fast.
"""
from __future__ import annotations

import base64
import io
import json
import sys
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image

from image_inputs import png_base64
from sdserve_server import PROJECT_ROOT, ServerAddresses, make_repository, serving

sys.path.insert(0, str(PROJECT_ROOT))  # the training package, whose checker scores the images
from training.checker import Score, analyse, colour_names, score  # noqa: E402
from training.evaluate import held_out_scenes, to_uint8  # noqa: E402
from training.render import render_scenes  # noqa: E402
from training.scenes import Scene, scene_for_caption  # noqa: E402
from training.vocabulary import COLOUR_NAMES, RELATIONS  # noqa: E402

MODEL = "shapes_sd"
STEPS = 10  # Euler at 10 steps already names the colours right 98% of the time (README table)
RED = COLOUR_NAMES.index("red")
# Captions held out from training, each with its index as the seed: without guidance (1) the model
# gets 223 and 217 of their 237 facts right (seeds 0-47 and 1000-1047), with the default guidance 3
# 231 and 229; 7 and 9 captions gain, 3 and 4 lose (CPU, float32, 10 steps).
GUIDANCE_CAPTIONS = 48
GUIDANCE_MIN_GAIN = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerAddresses]:
    repository = make_repository(tmp_path_factory.mktemp("shapes") / "repo",
                                 {MODEL: PROJECT_ROOT / "model_repository" / MODEL})
    with serving(repository) as addresses:
        yield addresses


def decoded_png(b64_png: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(b64_png))) as image:
        return np.asarray(image.convert("RGB"))


def generate(server: ServerAddresses, prompt: str, **parameters: object) -> np.ndarray:
    """One image from the HTTP generate extension (a lossless PNG)."""
    body = json.dumps({"prompt": prompt, "steps": STEPS, **parameters}).encode()
    request = urllib.request.Request(f"http://{server.http}/v2/models/{MODEL}/generate", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return decoded_png(json.load(response)["generated_image"][0])


def red_share(image: np.ndarray) -> float:
    return float((colour_names(image) == RED).mean())


# DDIM too: it reads clip_sample and set_alpha_to_one from the model's scheduler config, and with
# SD's defaults there (latents clipped to [-1, 1]) it drew noise.
@pytest.mark.parametrize(("seed", "scheduler"), [(0, ""), (1, ""), (0, "ddim")])
def test_a_red_circle_is_red_where_the_circle_is(server: ServerAddresses, seed: int, scheduler: str) -> None:
    image = generate(server, "a red circle", seed=seed, scheduler=scheduler)
    analysis = analyse(image)
    assert analysis.background == "white"  # the background a prompt without one gets
    circle = analysis.find("red")
    assert circle is not None and circle.shape == "circle", analysis
    # Red fills a disc around the circle's centre and hardly appears anywhere else.
    size = image.shape[0]
    rows, cols = np.mgrid[0:size, 0:size]
    distance = np.hypot((cols + 0.5) / size - circle.centre_x, (rows + 0.5) / size - circle.centre_y)
    is_red = colour_names(image) == RED
    assert is_red[distance < 0.08].mean() > 0.9
    assert is_red[distance > 0.25].mean() < 0.01


# Both orders of each relation, so that a model drawing one fixed layout (or the objects in either
# order, as the weights before the text encoder's layout slots did) fails.
@pytest.mark.parametrize("relation", list(RELATIONS))
def test_two_objects_stand_where_the_relation_says(server: ServerAddresses, relation: str) -> None:
    circle, square = ("circle", "red", "medium"), ("square", "blue", "medium")
    for first, second in ((circle, square), (square, circle)):
        scene = scene_for_caption(first[0], first[1], size=first[2], second=second, relation=relation)
        image = generate(server, scene.caption, seed=0)
        result = score(image, scene)
        assert (result.colour_correct, result.shape_correct, result.position_correct) == (2, 2, 1), \
            (scene.caption, analyse(image))


def test_image_to_image_at_a_low_strength_keeps_the_layout(server: ServerAddresses) -> None:
    # The image has the red circle on the left, the prompt asks for it on the right.
    circle, square = ("circle", "red"), ("square", "blue", "medium")
    drawn = scene_for_caption(*circle, second=square, relation="to the left of")
    asked = scene_for_caption(*circle, second=square, relation="to the right of")
    image = png_base64(Image.fromarray(to_uint8(render_scenes([drawn], 128))[0]))

    def relation_kept(strength: float) -> bool:
        result = generate(server, asked.caption, seed=0, image=image, strength=strength)
        kept, followed = score(result, drawn), score(result, asked)
        assert (kept.colour_correct, kept.shape_correct) == (2, 2), analyse(result)
        assert kept.position_correct != followed.position_correct
        return bool(kept.position_correct)

    assert relation_kept(0.3)
    assert not relation_kept(1.0)  # the prompt's layout, once the image is wholly noised


def facts_drawn_right(server: ServerAddresses, scenes: list[Scene], guidance_scale: float) -> Score:
    """The checker's score over one image per scene (seed = its index), requested together so they batch."""
    def draw(index: int) -> np.ndarray:
        return generate(server, scenes[index].caption, seed=index, guidance_scale=guidance_scale)

    with ThreadPoolExecutor(4) as pool:
        images = list(pool.map(draw, range(len(scenes))))
    total = Score()
    for image, scene in zip(images, scenes, strict=True):
        total.add(score(image, scene))
    return total


def correct_facts(result: Score) -> int:
    return result.colour_correct + result.shape_correct + result.position_correct


def test_a_higher_guidance_scale_draws_held_out_prompts_more_accurately(server: ServerAddresses) -> None:
    scenes = held_out_scenes(GUIDANCE_CAPTIONS)
    unguided, guided = (facts_drawn_right(server, scenes, scale) for scale in (1.0, 3.0))
    assert correct_facts(guided) - correct_facts(unguided) >= GUIDANCE_MIN_GAIN, (unguided, guided)


# Prompts that leave the colour open, with seeds for which the model happens to draw red (red is
# one colour in ten, so most seeds draw none; these seeds belong to the shipped weights).
@pytest.mark.parametrize(("prompt", "seed"), [("", 8), ("a circle", 24)])
def test_a_negative_prompt_red_removes_red(server: ServerAddresses, prompt: str, seed: int) -> None:
    assert red_share(generate(server, prompt, seed=seed)) > 0.04
    without_red = generate(server, prompt, seed=seed, negative_prompt="red")
    assert red_share(without_red) < 0.005
    assert analyse(without_red).objects  # still a scene, in other colours


def test_the_same_seed_gives_the_same_image_over_http_grpc_and_openai(server: ServerAddresses) -> None:
    prompt, seed = "a blue square on a yellow background", 7
    over_http = generate(server, prompt, seed=seed)

    with grpcclient.InferenceServerClient(server.grpc) as client:
        text = grpcclient.InferInput("prompt", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[prompt.encode()]], dtype=object))
        result = client.infer(MODEL, [text], parameters={"steps": STEPS, "seed": seed})
        over_grpc = result.as_numpy("generated_image")[0]

    with openai.OpenAI(base_url=f"http://{server.http}/v1", api_key="unused", max_retries=0) as client:
        answer = client.images.generate(model=MODEL, prompt=prompt, size="128x128",
                                        extra_body={"steps": STEPS, "seed": seed})
        assert answer.data is not None and answer.data[0].b64_json is not None
        over_openai = decoded_png(answer.data[0].b64_json)

    np.testing.assert_array_equal(over_grpc, over_http)
    np.testing.assert_array_equal(over_openai, over_http)
    analysis = analyse(over_http)
    square = analysis.find("blue")
    assert analysis.background == "yellow" and square is not None and square.shape == "square", analysis
