"""Whose fault a failed load is: the config's (INVALID_ARG) only for errors typed as such, never
for an exception's message or for a ValueError raised anywhere else."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import triton_python_backend_utils as pb_utils
from sdserve_backend.backends.diffusion import settings
from sdserve_backend.backends.diffusion.model import TritonPythonModel
from sdserve_backend.booleans import parse_bool
from sdserve_backend.config_errors import InvalidParameter, ModelConfigError, ModelFileNotFound, UnusableModelFile
from sdserve_backend.engine.fp8 import parse_fp8_mode
from sdserve_backend.main import load_error_code
from sdserve_backend.pipelines import load_components
from sdserve_backend.pipelines.single_file import read_shapes


@pytest.mark.parametrize("error", [
    InvalidParameter("config parameter 'steps' must be an integer from 1 to 999, got '0'"),
    ModelFileNotFound("weights not found at /m/1; see README"),
    UnusableModelFile("model.safetensors is not a readable .safetensors checkpoint"),
    pb_utils.TritonModelException("parameter 'mode' must be fast or slow", code=pb_utils.TritonError.INVALID_ARG),
])
def test_errors_typed_as_the_configs_fail_the_load_as_invalid_arg(error: Exception) -> None:
    assert load_error_code(error) == "INVALID_ARG"


@pytest.mark.parametrize("error", [
    ValueError("config parameter 'steps' must be an integer"),  # the words alone do not make it the config's
    FileNotFoundError("weights not found at /m/1"),
    RuntimeError("CUDA error: out of memory"),
    MemoryError(),
    pb_utils.TritonModelException("the model cannot start"),
    pb_utils.TritonModelException("no such device", code=pb_utils.TritonError.NOT_FOUND),
])
def test_every_other_error_fails_the_load_as_internal(error: Exception) -> None:
    assert load_error_code(error) == "INTERNAL"


def test_the_typed_config_errors_stay_the_builtin_errors_callers_catch() -> None:
    assert issubclass(InvalidParameter, ValueError)
    assert issubclass(ModelFileNotFound, FileNotFoundError)
    assert issubclass(UnusableModelFile, ValueError)


def test_triton_model_exception_keeps_tritons_one_argument_form() -> None:
    error = pb_utils.TritonModelException("failed")
    assert (str(error), error.code(), error.code_name()) == ("failed", pb_utils.TritonError.INTERNAL, "INTERNAL")
    with pytest.raises(ValueError, match="code 99"):
        pb_utils.TritonModelException("failed", code=99)


@pytest.mark.parametrize(("name", "value"), [
    ("lora_slots", "1"), ("steps", "0"), ("image_height", "100"), ("guidance_scale", "-1"), ("seed", "x"),
    ("step_batching", "maybe"), ("engine_sizes", "768"), ("refiner", "../other"), ("cache_interval", "0"),
    ("stepz", "30"),
])
def test_the_diffusion_models_config_checks_raise_invalid_parameter(name: str, value: str) -> None:
    with pytest.raises(InvalidParameter, match=f"config parameter '{name}'"):
        settings.read_model_defaults({name: value}, 64)


def test_the_engine_and_boolean_checks_raise_invalid_parameter() -> None:
    with pytest.raises(InvalidParameter, match="config parameter 'engine_fp8' must be one of 'off', 'static'"):
        parse_fp8_mode("dynamic")
    with pytest.raises(InvalidParameter, match="config parameter 'engine_compile' must be"):
        parse_bool("engine_compile", "yes please", False, "config parameter")


def test_missing_weights_and_files_a_parameter_names_raise_model_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelFileNotFound, match="weights not found at"):
        settings.locate_weights(tmp_path, {})
    with pytest.raises(ModelFileNotFound, match="config parameter 'vae_weights'"):
        settings.read_checkpoint_options(tmp_path, {"vae_weights": "vae.safetensors"})
    with pytest.raises(InvalidParameter, match="config parameter 'prediction_type'"):
        settings.read_checkpoint_options(tmp_path, {"prediction_type": "sample"})


def test_a_weights_file_the_loader_cannot_use_raises_unusable_model_file(tmp_path: Path) -> None:
    junk = tmp_path / "model.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UnusableModelFile, match="model.safetensors is not a readable .safetensors checkpoint"):
        read_shapes(junk)
    text = tmp_path / "model.ckpt.txt"
    text.write_text("weights")
    with pytest.raises(UnusableModelFile, match="is not a .safetensors checkpoint"):
        load_components(text, torch.device("cpu"), torch.float32)
    with pytest.raises(ModelFileNotFound, match="is not a diffusers model folder"):
        load_components(tmp_path, torch.device("cpu"), torch.float32)


def test_a_checkpoint_the_server_cannot_open_for_want_of_file_descriptors_fails_the_load_as_internal(
        tmp_path: Path) -> None:
    """Out of file descriptors (or memory, or an I/O error) the server fails, not the config: the
    same readable checkpoint loads once descriptors are free again."""
    checkpoint = tmp_path / "model.safetensors"
    save_file({"first_stage_model.decoder.conv_in.weight": torch.zeros(1)}, str(checkpoint))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(int(fd) for fd in os.listdir("/proc/self/fd")) + 1, hard))
    try:
        while True:
            try:
                held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as error:
                assert error.errno == errno.EMFILE
                break
        with pytest.raises(Exception) as raised:
            read_shapes(checkpoint)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert not isinstance(raised.value, ModelConfigError), raised.value
    assert load_error_code(raised.value) == "INTERNAL"
    assert read_shapes(checkpoint) == {"first_stage_model.decoder.conv_in.weight": (1,)}


def test_a_refiner_the_repository_cannot_give_is_named_without_the_servers_folders(
        tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    """The config names the refiner by its model name; the 400 says what is wrong with that model
    without the repository's place on the host, which the caller never gave."""
    repository = tmp_path / "repository"
    shutil.copytree(tiny_model_dirs["sd"], repository / "tiny_sd" / "1")
    (repository / "empty_refiner" / "1").mkdir(parents=True)
    expected = {
        "no_such_model": "config parameter 'refiner': no model 'no_such_model' with a version folder in the model repository",
        "empty_refiner": "config parameter 'refiner': model 'empty_refiner': weights not found at empty_refiner/1/1.5-pytorch_model",
    }
    for refiner, message in expected.items():
        config = {"name": "tiny_sd", "max_batch_size": 1, "parameters": {"refiner": {"string_value": refiner}}}
        with pytest.raises(ModelFileNotFound) as raised:
            TritonPythonModel().initialize({
                "model_config": json.dumps(config), "model_repository": str(repository / "tiny_sd"), "model_version": "1",
                "model_name": "tiny_sd", "model_instance_kind": "CPU", "model_instance_device_id": "0",
            })
        assert str(raised.value).startswith(message), raised.value
        assert str(repository) not in str(raised.value)
        assert load_error_code(raised.value) == "INVALID_ARG"
