"""The "diffusion" backend model: config and request parameters, weights lookup, batching, and the
Triton model class end to end on the tiny model."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import triton_python_backend_utils as pb_utils

from sdserve_backend.backends.diffusion import settings as model_settings
from sdserve_backend.backends.diffusion.batching import Job, run_jobs
from sdserve_backend.backends.diffusion.model import TritonPythonModel
from sdserve_backend.pipelines import GenerationRequest, GenerationSettings, TextToImagePipeline

PipelineLoader = Callable[[str], TextToImagePipeline]


def triton_parameters(**values: str) -> dict[str, dict[str, str]]:
    return {key: {"string_value": value} for key, value in values.items()}


def defaults(**values: str) -> model_settings.ModelDefaults:
    flat = model_settings.config_parameters({"parameters": triton_parameters(**values)})
    return model_settings.read_model_defaults(flat, default_image_size=128)


# ---------------------------------------------------------------------------------------------
# Parameters


def test_config_parameters_become_typed_defaults() -> None:
    read = defaults(image_height="64", image_width="96", steps="3", guidance_scale="5.5", scheduler="euler", seed="9")

    assert read.settings == GenerationSettings(64, 96, 3, 5.5, "euler")
    assert read.seed == 9


def test_missing_config_parameters_fall_back_to_the_models_size_and_common_defaults() -> None:
    read = defaults(seed="")

    assert read.settings == GenerationSettings(128, 128, 30, 7.5, "")
    assert read.seed is None
    assert read.prompt_cache_size == 256
    assert defaults(prompt_cache_size="0").prompt_cache_size == 0
    assert (read.lora_slots, read.lora_max_rank) == (8, 128)
    assert (defaults(lora_slots="0").lora_slots, defaults(lora_max_rank="64").lora_max_rank) == (0, 64)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"image_height": "100"}, "config parameter 'image_height' must be a multiple of 8 from 8 to 4096, got '100'"),
        ({"steps": "many"}, "config parameter 'steps' must be an integer, got 'many'"),
        ({"guidance_scale": "-1"}, "config parameter 'guidance_scale' must be a finite number >= 0, got '-1'"),
        ({"seed": "x"}, "config parameter 'seed' must be an integer, got 'x'"),
        ({"prompt_cache_size": "-1"}, "config parameter 'prompt_cache_size' must be an integer >= 0, got '-1'"),
        ({"prompt_cache_size": "lots"}, "config parameter 'prompt_cache_size' must be an integer, got 'lots'"),
        ({"lora_slots": "1"}, "config parameter 'lora_slots' must be 0 (off) or an integer from 2 to 256, got '1'"),
        ({"lora_max_rank": "0"}, "config parameter 'lora_max_rank' must be an integer from 1 to 1024, got '0'"),
    ],
)
def test_bad_config_parameters_are_named_with_their_value(values: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError) as raised:
        defaults(**values)
    assert str(raised.value) == message


def test_request_parameters_override_the_config_whatever_their_json_type() -> None:
    base = defaults(steps="20", seed="4")
    parameters = {"steps": 3, "guidance_scale": "2", "height": 64, "width": "72", "scheduler": "ddim", "seed": "12"}

    settings, seed = model_settings.read_request_overrides(json.dumps(parameters), base)

    assert settings == GenerationSettings(64, 72, 3, 2.0, "ddim")
    assert seed == 12
    assert model_settings.read_request_overrides("{}", base) == (base.settings, 4)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"width": 130}, "parameter 'width' must be a multiple of 8 from 8 to 4096, got 130"),
        ({"steps": 0}, "parameter 'steps' must be an integer from 1 to 999, got 0"),
        ({"seed": 1.5}, "parameter 'seed' must be an integer, got 1.5"),
        ({"steps": True}, "parameter 'steps' must be an integer, got True"),
    ],
)
def test_bad_request_parameters_are_named_with_their_value(parameters: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as raised:
        model_settings.read_request_overrides(json.dumps(parameters), defaults())
    assert str(raised.value) == message


# ---------------------------------------------------------------------------------------------
# Weights


def test_weights_are_found_in_the_documented_order(tmp_path: Path) -> None:
    version_dir = tmp_path / "1"
    tutorial = version_dir / "1.5-pytorch_model"
    tutorial.mkdir(parents=True)
    (tutorial / "model_index.json").write_text("{}")
    (version_dir / "model.safetensors").write_bytes(b"")

    assert model_settings.resolve_weights(version_dir, "", "1.5") == tutorial
    assert model_settings.resolve_weights(version_dir, "", "2.1") == version_dir / "model.safetensors"
    assert model_settings.resolve_weights(version_dir, str(tutorial), "") == tutorial
    assert model_settings.resolve_weights(version_dir, "1.5-pytorch_model", "") == tutorial
    (version_dir / "model_index.json").write_text("{}")
    assert model_settings.resolve_weights(version_dir, "", "1.5") == version_dir


def test_missing_weights_say_where_they_were_looked_for(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as raised:
        model_settings.resolve_weights(tmp_path, "", "xl-1.0")
    assert str(raised.value) == f'weights not found at {tmp_path / "xl-1.0-pytorch_model"}; see README "Serving real weights"'


def test_version_mismatch_is_reported_only_when_the_weights_disagree() -> None:
    assert model_settings.version_mismatch("1.5", "1.5", is_sdxl=False) is None
    assert model_settings.version_mismatch("1.5", None, is_sdxl=False) is None
    assert model_settings.version_mismatch("", "xl-1.0", is_sdxl=True) is None
    assert "says 'xl-1.0'" in str(model_settings.version_mismatch("xl-1.0", None, is_sdxl=False))
    assert "says '2.1'" in str(model_settings.version_mismatch("2.1", "1.5", is_sdxl=False))


# ---------------------------------------------------------------------------------------------
# Batching


def test_jobs_sharing_settings_run_together_and_a_bad_job_fails_alone(load_tiny_pipeline: PipelineLoader) -> None:
    pipeline = load_tiny_pipeline("sd")
    shared = GenerationSettings(64, 64, 2, 7.5, "")
    first = Job(GenerationRequest(["a cat"], seed=1), shared)
    # Same settings under another spelling of the same scheduler.
    second = Job(GenerationRequest(["a dog", "a cow"], seed=2), GenerationSettings(64, 64, 2, 7.5, "pndm"))
    too_tall = Job(GenerationRequest(["a cat"], seed=1), GenerationSettings(100, 64, 2, 7.5, ""))
    other_size = Job(GenerationRequest(["a cat"], seed=1), GenerationSettings(64, 128, 2, 7.5, ""))
    steps_seen: list[tuple[int, int, int]] = []

    outcomes = run_jobs(
        pipeline,
        [first, second, too_tall, ValueError("parse failure"), other_size],
        on_step=lambda index, step, steps: steps_seen.append((index, step, steps)),
    )

    assert isinstance(outcomes[0], np.ndarray) and outcomes[0].shape == (1, 64, 64, 3)
    assert isinstance(outcomes[1], np.ndarray) and outcomes[1].shape == (2, 64, 64, 3)
    assert isinstance(outcomes[2], ValueError) and "height must be a positive multiple of 8, got 100" in str(outcomes[2])
    assert str(outcomes[3]) == "parse failure"
    assert isinstance(outcomes[4], np.ndarray) and outcomes[4].shape == (1, 64, 128, 3)
    [alone] = pipeline([first.request], shared)
    assert int(np.abs(outcomes[0].astype(np.int16) - alone.astype(np.int16)).max()) <= 2
    assert sorted(steps_seen) == [(0, 1, 2), (0, 2, 2), (1, 1, 2), (1, 2, 2), (4, 1, 2), (4, 2, 2)]


def test_a_batch_whose_requests_are_all_cancelled_stops(load_tiny_pipeline: PipelineLoader) -> None:
    settings = GenerationSettings(64, 64, 3, 7.5, "")
    jobs: list[Job | Exception] = [Job(GenerationRequest(["a"], seed=1), settings)]
    steps_seen: list[int] = []

    [outcome] = run_jobs(
        load_tiny_pipeline("sd"), jobs, on_step=lambda _, step, __: steps_seen.append(step), is_cancelled=lambda _: True
    )

    assert str(outcome) == "request was cancelled"
    assert steps_seen == []


# ---------------------------------------------------------------------------------------------
# The Triton model


@pytest.fixture(scope="module")
def tiny_sd_model(tiny_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> TritonPythonModel:
    repository = tmp_path_factory.mktemp("repository") / "tiny_sd"
    shutil.copytree(tiny_model_dirs["sd"], repository / "1")
    config = {
        "name": "tiny_sd",
        "max_batch_size": 4,
        "parameters": triton_parameters(
            image_height="64", image_width="64", steps="2", guidance_scale="7.5", scheduler="", seed="",
            version="1.5", onnx_opset="18", force_engine_build="", weights="",
        ),
    }
    model = TritonPythonModel()
    model.initialize({
        "model_config": json.dumps(config),
        "model_repository": str(repository),
        "model_version": "1",
        "model_name": "tiny_sd",
        "model_instance_kind": "CPU",
        "model_instance_device_id": "0",
    })
    return model


def prompt_request(prompts: list[str], parameters: dict[str, object], negative: list[str] | None = None) -> pb_utils.InferenceRequest:
    inputs = [pb_utils.Tensor("prompt", np.array([[text.encode()] for text in prompts], dtype=np.object_))]
    if negative is not None:
        inputs.append(pb_utils.Tensor("negative_prompt", np.array([[text.encode()] for text in negative], dtype=np.object_)))
    return pb_utils.InferenceRequest(inputs, request_id="r", parameters=parameters)


def test_model_answers_each_request_of_a_batch_with_its_images_or_its_error(tiny_sd_model: TritonPythonModel) -> None:
    requests = [
        prompt_request(["a cat", "a dog"], {"seed": 1}, negative=["blurry"]),
        prompt_request(["a cat"], {"seed": 2, "height": 33}),
        prompt_request(["a cat"], {"seed": 1, "width": 128}),
    ]

    responses = tiny_sd_model.execute(requests)

    assert len(responses) == 3
    images = pb_utils.get_output_tensor_by_name(responses[0], "generated_image").as_numpy()
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8
    assert responses[1].has_error()
    assert responses[1].error().message() == "parameter 'height' must be a multiple of 8 from 8 to 4096, got 33"
    assert responses[1].error().code() == pb_utils.TritonError.INVALID_ARG
    wide = pb_utils.get_output_tensor_by_name(responses[2], "generated_image").as_numpy()
    assert wide.shape == (1, 64, 128, 3)


def test_model_images_depend_only_on_the_request_not_its_batch(tiny_sd_model: TritonPythonModel) -> None:
    alone = tiny_sd_model.execute([prompt_request(["a cat"], {"seed": 5})])
    batched = tiny_sd_model.execute([prompt_request(["a dog"], {"seed": 6}), prompt_request(["a cat"], {"seed": 5})])

    first = pb_utils.get_output_tensor_by_name(alone[0], "generated_image").as_numpy()
    second = pb_utils.get_output_tensor_by_name(batched[1], "generated_image").as_numpy()
    assert int(np.abs(first.astype(np.int16) - second.astype(np.int16)).max()) <= 2


def test_model_without_weights_fails_to_initialize_with_the_readme_hint(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    config = {"name": "m", "parameters": triton_parameters(version="xl-1.0", weights="")}

    with pytest.raises(FileNotFoundError, match='weights not found at .*xl-1.0-pytorch_model; see README "Serving real weights"'):
        TritonPythonModel().initialize({
            "model_config": json.dumps(config),
            "model_repository": str(tmp_path),
            "model_version": "1",
            "model_instance_kind": "GPU",
        })
