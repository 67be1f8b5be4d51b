"""Image-to-image and inpainting through a real server, with official clients as peers: v2 infer
(tritonclient HTTP and gRPC: `image` / `mask` as UINT8 pixels or BYTES files), generate (base64),
and bad images refused with 400 / INVALID_ARGUMENT before any GPU work.

The server's images equal the in-process pipeline's for the same request (which equals
diffusers', tests/python/test_image_tasks_match_diffusers.py).
"""
from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from sdserve_backend.pipelines import GenerationRequest, GenerationSettings, TextToImagePipeline, load_components
from image_inputs import picture, rectangle_mask
from sdserve_server import PROJECT_ROOT, ServerAddresses, http_json, serve_tiny_sd_and_add_sub

MODEL = "tiny_sd"
SIZE = 64
STEPS = 4
PROMPT = "a photo of the cat"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerAddresses]:
    yield from serve_tiny_sd_and_add_sub(tmp_path_factory, "image_tasks")


@pytest.fixture(scope="module")
def http(server: ServerAddresses) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(url=server.http)


@pytest.fixture(scope="module")
def pipeline() -> TextToImagePipeline:
    folder = PROJECT_ROOT / "model_repository" / MODEL / "1"
    return TextToImagePipeline(load_components(folder, torch.device("cpu"), torch.float32))




def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_bomb(side: int = 10_000) -> bytes:
    """A valid 1-bit PNG of side x side pixels (100 megapixels): a few kB of file."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = zlib.compress(b"\x00" * ((1 + side // 8) * side), 9)
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def prompt_input(module, prompts: list[str]):  # noqa: ANN001 - http or grpc tritonclient module
    tensor = module.InferInput("prompt", [len(prompts), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(prompts, dtype=object).reshape(-1, 1))
    return tensor


def pixels_input(module, name: str, images: list[Image.Image]):  # noqa: ANN001
    array = np.stack([np.asarray(image) if np.asarray(image).ndim == 3 else np.asarray(image)[..., None]
                      for image in images])
    tensor = module.InferInput(name, list(array.shape), "UINT8")
    tensor.set_data_from_numpy(array)
    return tensor


def files_input(module, name: str, files: list[bytes]):  # noqa: ANN001
    tensor = module.InferInput(name, [len(files), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(files, dtype=object).reshape(-1, 1))
    return tensor


PARAMETERS = {"steps": STEPS, "seed": 5, "strength": 0.75}


def expected(pipeline: TextToImagePipeline, **fields: object) -> np.ndarray:
    request = GenerationRequest([PROMPT], seed=5, **fields)  # type: ignore[arg-type]
    return pipeline([request], GenerationSettings(SIZE, SIZE, STEPS, 7.5))[0]


def test_img2img_over_v2_http_with_pixels_or_a_png_file_equals_the_pipeline(
    http: httpclient.InferenceServerClient, pipeline: TextToImagePipeline
) -> None:
    image = picture(1, SIZE)

    as_pixels = http.infer(MODEL, [prompt_input(httpclient, [PROMPT]), pixels_input(httpclient, "image", [image])],
                           parameters=PARAMETERS).as_numpy("generated_image")
    as_file = http.infer(MODEL, [prompt_input(httpclient, [PROMPT]), files_input(httpclient, "image", [png(image)])],
                         parameters=PARAMETERS).as_numpy("generated_image")

    # No height/width: the output has the input image's size (64², not the model's 128²).
    assert as_pixels.shape == (1, SIZE, SIZE, 3)
    assert np.array_equal(as_pixels, as_file)
    assert np.array_equal(as_pixels, expected(pipeline, images=(image,), strength=0.75))


def test_inpainting_over_v2_grpc_keeps_the_unmasked_pixels(
    server: ServerAddresses, pipeline: TextToImagePipeline
) -> None:
    image, mask = picture(2, SIZE), rectangle_mask(SIZE)
    client = grpcclient.InferenceServerClient(url=server.grpc)
    inputs = [prompt_input(grpcclient, [PROMPT]), files_input(grpcclient, "image", [png(image)]),
              pixels_input(grpcclient, "mask", [mask])]

    result = client.infer(MODEL, inputs, parameters={"steps": STEPS, "seed": 5, "mask_blur": 2})

    images = result.as_numpy("generated_image")
    assert np.array_equal(images, expected(pipeline, images=(image,), masks=(mask,), mask_blur=2))
    unmasked = np.asarray(rectangle_mask(SIZE)) == 0
    # Blur widens the repainted edge by a few pixels; far from it the pixels are the input's.
    far = np.zeros_like(unmasked)
    far[:8], far[-8:] = True, True
    assert np.array_equal(images[0][far], np.asarray(image)[far])


def test_the_model_metadata_declares_the_image_inputs(http: httpclient.InferenceServerClient) -> None:
    inputs = {tensor["name"]: tensor for tensor in http.get_model_metadata(MODEL)["inputs"]}
    assert inputs["image"]["datatype"] == "UINT8" and inputs["mask"]["datatype"] == "UINT8"
    config_inputs = {tensor["name"]: tensor for tensor in http.get_model_config(MODEL)["input"]}
    assert config_inputs["image"]["optional"] and config_inputs["mask"]["optional"]



def test_generate_takes_base64_images(server: ServerAddresses, pipeline: TextToImagePipeline) -> None:
    image, mask = picture(3, SIZE), rectangle_mask(SIZE)
    body = {"prompt": PROMPT, "image": base64.b64encode(png(image)).decode(),
            "mask": "data:image/png;base64," + base64.b64encode(png(mask)).decode(), "steps": STEPS, "seed": 5}

    status, reply = http_json(server, "POST", f"/v2/models/{MODEL}/generate", body)

    assert status == 200, reply
    [encoded] = reply["generated_image"]
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as made:
        assert np.array_equal(np.asarray(made)[np.newaxis], expected(pipeline, images=(image,), masks=(mask,)))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"image": base64.b64encode(b"not an image at all").decode()}, "is not a PNG, JPEG or WebP image"),
        ({"image": "%%% not base64 %%%"}, "must be a base64-encoded image file"),
        ({"image": base64.b64encode(png_bomb()).decode()}, "10000x10000; input images may be at most 4096x4096"),
        ({"image": base64.b64encode(png(picture(1, SIZE))).decode(),
          "mask": base64.b64encode(png(rectangle_mask(32))).decode()}, "a mask must be the size of its image"),
        ({"mask": base64.b64encode(png(rectangle_mask(SIZE))).decode()}, "a mask needs an image"),
        ({"image": base64.b64encode(png(picture(1, SIZE))).decode(), "strength": 1.5}, "strength"),
        ({"image": base64.b64encode(png(picture(1, SIZE))).decode(), "strength": 0.1, "steps": 4}, "leaves no step to run"),
    ],
    ids=["not-an-image", "not-base64", "decompression-bomb", "mask-size", "mask-alone", "strength-range",
         "strength-too-low"],
)
def test_bad_images_are_a_400_naming_the_problem(server: ServerAddresses, body: dict, message: str) -> None:
    status, reply = http_json(server, "POST", f"/v2/models/{MODEL}/generate", {"prompt": PROMPT, **body})
    assert status == 400, reply
    assert message in reply["error"]


def test_bad_image_tensors_are_invalid_argument_over_grpc(server: ServerAddresses) -> None:
    client = grpcclient.InferenceServerClient(url=server.grpc)
    wrong_dtype = grpcclient.InferInput("image", [1, SIZE, SIZE, 3], "FP32")
    wrong_dtype.set_data_from_numpy(np.zeros((1, SIZE, SIZE, 3), dtype=np.float32))
    wrong_channels = grpcclient.InferInput("image", [1, SIZE, SIZE, 2], "UINT8")
    wrong_channels.set_data_from_numpy(np.zeros((1, SIZE, SIZE, 2), dtype=np.uint8))
    for bad, message in [(wrong_dtype, "data-type is 'FP32'"), (wrong_channels, "C = 1, 3 or 4"),
                         (files_input(grpcclient, "image", [png_bomb()]), "at most 4096x4096")]:
        with pytest.raises(InferenceServerException, match=message) as raised:
            client.infer(MODEL, [prompt_input(grpcclient, [PROMPT]), bad], parameters={"steps": 1})
        assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"


# ---------------------------------------------------------------------------------------------
# OpenAI's images.edit() and Automatic1111's img2img


def transparent_mask(size: int = SIZE) -> Image.Image:
    """OpenAI's mask: opaque where the image stays, transparent where it is edited."""
    mask = Image.new("RGBA", (size, size), (0, 0, 0, 255))
    mask.putalpha(Image.eval(rectangle_mask(size), lambda value: 255 - value))
    return mask


def test_openai_images_edit_inpaints_where_the_mask_is_transparent(
    server: ServerAddresses, pipeline: TextToImagePipeline
) -> None:
    import openai

    image = picture(5, SIZE)
    with openai.OpenAI(base_url=f"http://{server.http}/v1", api_key="unused", max_retries=0) as client:
        edited = client.images.edit(image=("image.png", png(image), "image/png"),
                                    mask=("mask.png", png(transparent_mask()), "image/png"),
                                    prompt=PROMPT, n=2, size=f"{SIZE}x{SIZE}", extra_body={"steps": STEPS, "seed": 5})
        plain = client.images.edit(image=("image.png", png(image), "image/png"), prompt=PROMPT, size=f"{SIZE}x{SIZE}",
                                   extra_body={"steps": STEPS, "seed": 5})

    files = [base64.b64decode(item.b64_json or "") for item in edited.data]
    made = np.stack([np.asarray(Image.open(io.BytesIO(file))) for file in files])
    # One file per image on the wire: two images, each encoded in one VAE batch, as diffusers would.
    request = GenerationRequest([PROMPT, PROMPT], seed=5, images=(image, image), masks=(rectangle_mask(SIZE),) * 2)
    assert np.array_equal(made, pipeline([request], GenerationSettings(SIZE, SIZE, STEPS, 7.5))[0])
    # Without a mask (and an opaque image), images.edit() is image-to-image.
    [item] = plain.data
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(item.b64_json or ""))))[np.newaxis],
                          expected(pipeline, images=(image,)))


def test_openai_images_edit_refuses_a_bad_image_in_openai_s_shape(server: ServerAddresses) -> None:
    import openai

    with openai.OpenAI(base_url=f"http://{server.http}/v1", api_key="unused", max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as raised:
            client.images.edit(image=("image.png", b"GIF89a not really", "image/png"), prompt=PROMPT)
        assert "is not a PNG, JPEG or WebP image" in raised.value.message
        with pytest.raises(openai.BadRequestError) as raised:
            client.images.edit(image=("image.png", png(picture(5, SIZE)), "image/png"),
                               mask=("mask.png", png(picture(5, 32).convert("RGBA")), "image/png"), prompt=PROMPT)
        assert "a mask must be the size of its image" in raised.value.message


def test_a1111_img2img_inpaints_with_its_defaults(server: ServerAddresses, pipeline: TextToImagePipeline) -> None:
    image, mask = picture(6, SIZE), rectangle_mask(SIZE)
    body = {"prompt": PROMPT, "init_images": [base64.b64encode(png(image)).decode()],
            "mask": base64.b64encode(png(mask)).decode(), "steps": STEPS, "seed": 5, "sampler_name": "Euler",
            "width": SIZE, "height": SIZE, "inpainting_fill": 1, "inpaint_full_res": False}

    status, reply = http_json(server, "POST", "/sdapi/v1/img2img", body)

    assert status == 200, reply
    [encoded] = reply["images"]
    made = np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))))[np.newaxis]
    # A1111's defaults: denoising_strength 0.75, mask_blur 4.
    request = GenerationRequest([PROMPT], seed=5, images=(image,), masks=(mask,), strength=0.75, mask_blur=4)
    assert np.array_equal(made, pipeline([request], GenerationSettings(SIZE, SIZE, STEPS, 7.5, "euler"))[0])
    assert json.loads(reply["info"])["denoising_strength"] == 0.75


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"init_images": []}, "must NOT have fewer than 1 items"),
     ({"inpainting_fill": 0}, "inpainting_fill"),
     ({"inpaint_full_res": True}, "inpaint_full_res"),
     ({"init_images": ["bm90IGFuIGltYWdl"]}, "is not a PNG, JPEG or WebP image")],
    ids=["no-image", "fill", "full-res", "not-an-image"],
)
def test_a1111_img2img_refuses_what_it_cannot_do(server: ServerAddresses, fields: dict, message: str) -> None:
    body = {"prompt": PROMPT, "init_images": [base64.b64encode(png(picture(6, SIZE))).decode()], "steps": 1, **fields}
    status, reply = http_json(server, "POST", "/sdapi/v1/img2img", body)
    assert status == 400 and message in reply["error"], reply


def test_the_cli_client_sends_an_image_and_a_mask(server: ServerAddresses, tmp_path) -> None:  # noqa: ANN001
    import subprocess

    (tmp_path / "image.png").write_bytes(png(picture(7, SIZE)))
    (tmp_path / "mask.png").write_bytes(png(rectangle_mask(SIZE)))
    command = ["node", str(PROJECT_ROOT / "bin" / "sdserve"), "client", "--url", server.http, "--model", MODEL,
               "--prompt", PROMPT, "--image", str(tmp_path / "image.png"), "--mask", str(tmp_path / "mask.png"),
               "--strength", "0.5", "--steps", "4", "--seed", "5", "--save-image", "--output-dir", str(tmp_path),
               "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    saved = list(tmp_path.glob("client_0_generated_image_*.jpg"))
    assert len(saved) == 1 and Image.open(saved[0]).size == (SIZE, SIZE)
    failing = subprocess.run([*command[:-4], "--strength", "0.1", "--no-progress"], capture_output=True, text=True,
                             timeout=300)
    assert failing.returncode == 1 and "leaves no step to run" in failing.stdout + failing.stderr
