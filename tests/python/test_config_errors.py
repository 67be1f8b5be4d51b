"""Whose fault a failed load is: the config's (INVALID_ARG) only for errors typed as such, never
for an exception's message or for a ValueError raised anywhere else."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import triton_python_backend_utils as pb_utils
from sdserve_backend.backends.diffusion import settings
from sdserve_backend.booleans import parse_bool
from sdserve_backend.config_errors import InvalidParameter, ModelFileNotFound, UnusableModelFile
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
