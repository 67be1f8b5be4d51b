"""What the diffusion model declares (capabilities), how strictly it reads its config, and the
image files it encodes; on the tiny SD model."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import triton_python_backend_utils as pb_utils
from PIL import Image

from bad_config_values import BAD_CONFIG_VALUES
from sdserve_backend.backends.diffusion import settings as model_settings
from sdserve_backend.backends.diffusion.model import TritonPythonModel
from sdserve_backend.config_errors import InvalidParameter, ModelConfigError


def triton_parameters(**values: str) -> dict[str, dict[str, str]]:
    return {key: {"string_value": value} for key, value in values.items()}


def initialize(repository: Path, max_batch_size: int = 4, **values: str) -> TritonPythonModel:
    config = {"name": "tiny_sd", "max_batch_size": max_batch_size, "parameters": triton_parameters(**values)}
    model = TritonPythonModel()
    model.initialize({
        "model_config": json.dumps(config), "model_repository": str(repository), "model_version": "1",
        "model_name": "tiny_sd", "model_instance_kind": "CPU", "model_instance_device_id": "0",
    })
    return model


@pytest.fixture(scope="module")
def repository(tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("contract") / "tiny_sd"
    shutil.copytree(tiny_model_dirs["sd"], folder / "1")
    return folder


@pytest.fixture(scope="module")
def model(repository: Path) -> TritonPythonModel:
    loaded = initialize(repository, image_height="64", image_width="64", steps="2", guidance_scale="6.5",
                        seed="3", step_batching="False", version="1.5", onnx_opset="18")
    yield loaded
    loaded.finalize()


def prompt_request(prompt: str, parameters: dict[str, object], outputs: list[str] | None = None) -> pb_utils.InferenceRequest:
    return pb_utils.InferenceRequest([pb_utils.Tensor("prompt", np.array([[prompt.encode()]], dtype=np.object_))],
                                     request_id=prompt, parameters=parameters, requested_output_names=outputs or [])


# ---------------------------------------------------------------------------------------------
# Config


def test_an_unknown_config_parameter_fails_the_load_naming_it_and_the_close_one(tmp_path: Path) -> None:
    # Before any weights are looked for: this folder has none.
    (tmp_path / "1").mkdir()
    with pytest.raises(ValueError) as raised:
        initialize(tmp_path, stepz="20")
    message = str(raised.value)
    assert message.startswith("config parameter 'stepz' is not known (did you mean 'steps'?); known: ")
    assert "guidance_scale" in message and "step_batching" in message


def test_an_unknown_config_parameter_like_no_known_one_fails_the_load_naming_it(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    with pytest.raises(InvalidParameter) as raised:
        initialize(tmp_path, zzzzzzzz_qqq="1")
    assert str(raised.value).startswith("config parameter 'zzzzzzzz_qqq' is not known; known: ")


@pytest.mark.parametrize(("name", "value", "message"), BAD_CONFIG_VALUES + [
    ("steps", "0", "config parameter 'steps' must be an integer from 1 to "),
])
def test_a_bad_config_value_fails_the_load_before_any_weights_are_looked_for(
    tmp_path: Path, name: str, value: str, message: str
) -> None:
    # This folder has no weights: a load that reached them would fail with "weights not found".
    (tmp_path / "1").mkdir()
    with pytest.raises(ModelConfigError) as raised:
        initialize(tmp_path, **{name: value})
    assert str(raised.value).startswith(message)


def test_every_accepted_config_parameter_is_read_without_complaint() -> None:
    values = {name: "" for name in model_settings.CONFIG_PARAMETERS}
    model_settings.check_config_parameter_names(values)
    assert model_settings.read_model_defaults(values, default_image_size=64).step_batching is True


@pytest.mark.parametrize(("text", "expected"), [("true", True), ("False", False), ("TRUE", True), ("", True)])
def test_config_booleans_are_true_or_false_in_any_case(text: str, expected: bool) -> None:
    values = {"step_batching": text}
    assert model_settings.read_model_defaults(values, default_image_size=64).step_batching is expected


@pytest.mark.parametrize("text", ["yes", "1", "on"])
def test_other_boolean_spellings_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=f"config parameter 'step_batching' must be \"true\" or \"false\", got '{text}'"):
        model_settings.read_model_defaults({"step_batching": text}, default_image_size=64)


# ---------------------------------------------------------------------------------------------
# Capabilities


def test_the_model_declares_its_tasks_batching_and_parameters_with_the_configs_defaults(model: TritonPythonModel) -> None:
    declared = model.capabilities()

    assert declared["tasks"] == ["text_to_image", "image_to_image", "inpaint"]
    assert declared["batching"] == "request"
    assert declared["max_images"] == 4
    parameters = declared["parameters"]
    assert parameters["steps"] == {"type": "integer", "minimum": 1, "maximum": 999, "default": 2}
    assert parameters["guidance_scale"] == {"type": "number", "minimum": 0, "default": 6.5}
    assert parameters["seed"]["default"] == 3 and parameters["seed"]["maximum"] == 2**64 - 1
    assert parameters["height"] == {"type": "integer", "minimum": 8, "maximum": 4096, "multiple_of": 8, "default": 64}
    assert {"", "euler", "euler_a", "EulerDiscreteScheduler"} <= set(parameters["scheduler"]["enum"])
    assert parameters["output_format"] == {"type": "string", "enum": ["png", "jpeg", "webp"], "default": "png"}
    assert parameters["output_compression"]["maximum"] == 100
    assert set(declared["config_parameters"]) == set(model_settings.CONFIG_PARAMETERS)
    assert [output["name"] for output in declared["outputs"]] == ["generated_image", "generated_image_encoded"]
    assert (declared["image_output"], declared["encoded_output"]) == ("generated_image", "generated_image_encoded")
    assert "refiner" not in declared and "high_noise_fraction" not in parameters
    json.dumps(declared)  # it travels as JSON


def test_a_step_batching_model_declares_step_batching(repository: Path) -> None:
    stepped = initialize(repository, max_batch_size=2, image_height="64", image_width="64", steps="1")
    try:
        assert stepped.capabilities()["batching"] == "step"
        assert stepped.capabilities()["max_images"] == 2
        assert "default" not in stepped.capabilities()["parameters"]["seed"]
    finally:
        stepped.finalize()


# ---------------------------------------------------------------------------------------------
# Output files


def encoded_files(response: pb_utils.InferenceResponse) -> list[bytes]:
    assert not response.has_error(), response.error()
    tensor = pb_utils.get_output_tensor_by_name(response, "generated_image_encoded")
    assert tensor is not None and tensor.kserve_datatype() == "BYTES"
    return [bytes(item) for item in tensor.as_numpy().reshape(-1)]


def test_png_files_carry_the_generation_parameters_that_remake_the_image(model: TritonPythonModel) -> None:
    [response] = model.execute([prompt_request("a cat", {"seed": 9, "output_format": "png", "scheduler": "euler_a"})])

    [png] = encoded_files(response)
    picture = Image.open(io.BytesIO(png))
    pixels = pb_utils.get_output_tensor_by_name(response, "generated_image").as_numpy()
    assert picture.format == "PNG" and np.array_equal(np.asarray(picture), pixels[0])
    assert picture.text["parameters"] == (
        "a cat\nSteps: 2, Sampler: Euler a, CFG scale: 6.5, Seed: 9, Size: 64x64, Model: tiny_sd"
    )
    assert json.loads(response.parameters()) == {"seed": 9}


@pytest.mark.parametrize(("output_format", "pillow_format"), [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_jpeg_and_webp_files_follow_output_compression(model: TritonPythonModel, output_format: str, pillow_format: str) -> None:
    best, small = model.execute([
        prompt_request("a dog", {"output_format": output_format}),
        prompt_request("a dog", {"output_format": output_format, "output_compression": 10}),
    ])

    [best_file], [small_file] = encoded_files(best), encoded_files(small)
    assert Image.open(io.BytesIO(best_file)).format == pillow_format
    assert Image.open(io.BytesIO(small_file)).size == (64, 64)
    assert len(small_file) < len(best_file)


def test_files_are_made_only_when_asked_for(model: TritonPythonModel) -> None:
    plain, by_name = model.execute([
        prompt_request("a cow", {}), prompt_request("a cow", {}, outputs=["generated_image_encoded"])
    ])

    assert pb_utils.get_output_tensor_by_name(plain, "generated_image_encoded") is None
    [png] = encoded_files(by_name)
    assert Image.open(io.BytesIO(png)).format == "PNG"


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"output_format": "gif"}, "parameter 'output_format' must be one of png, jpeg, webp, got 'gif'"),
        ({"output_format": "jpeg", "output_compression": 101}, "parameter 'output_compression' must be an integer from 0 to 100, got 101"),
    ],
)
def test_bad_output_parameters_are_named(model: TritonPythonModel, parameters: dict[str, object], message: str) -> None:
    [response] = model.execute([prompt_request("a cow", parameters)])
    assert response.error().message() == message
    assert response.error().code() == pb_utils.TritonError.INVALID_ARG


def test_step_batched_requests_get_their_files_too(repository: Path) -> None:
    stepped = initialize(repository, image_height="64", image_width="64", steps="1")
    try:
        request = prompt_request("a bird", {"seed": 4, "output_format": "jpeg"})
        [response] = stepped.execute([request])
        [jpeg] = encoded_files(response)
        assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
        assert json.loads(response.parameters()) == {"seed": 4}
    finally:
        stepped.finalize()
