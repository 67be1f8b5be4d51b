"""The GPU engine's CPU-visible behaviour: its runners compute what the eager models compute.

The CUDA graphs themselves need a GPU (bench/gpu/run.py checks them there); everything around
them (bucket choice, padding into static buffers, slicing back, chunked decoding, fallbacks, the
engine.json staleness rules) runs here with graphs off, through the same code path.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sdserve_backend.engine import ENGINE_FILE, bucket_sizes, pick_bucket, prepare, prepare_with_report
from sdserve_backend.engine import build as engine_build
from sdserve_backend.engine import metadata
from sdserve_backend.engine.backend import engine_dir_for, prepare_for_model
from sdserve_backend.engine.buckets import chunks
from sdserve_backend.engine.precompiled import PrecompiledForward
from sdserve_backend.engine.prepare import EngineOptions, vae_bucket_sizes, vae_decode_dtype
from sdserve_backend.engine.runners import UNetRunner, VaeRunner, decode_forward, plain_forward
from sdserve_backend.engine.static_call import BucketedCall
from sdserve_backend.pipelines import GenerationRequest, GenerationSettings, TextToImagePipeline, load_components
from sdserve_backend.pipelines import feature_cache
from sdserve_backend.pipelines.components import DiffusionComponents
from sdserve_backend.pipelines.device import Placement
from unet_inputs import unet_inputs

CPU = Placement(torch.device("cpu"), torch.float32)
PYTHON_SOURCE = Path(__file__).resolve().parents[2] / "python"
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}
# Convolutions over another batch size may sum in another order.
VAE_TOLERANCE = {"rtol": 1e-3, "atol": 1e-4}


@pytest.fixture(scope="module")
def components(tiny_model_dirs: dict[str, Path]) -> dict[str, DiffusionComponents]:
    return {variant: load_components(tiny_model_dirs[variant], torch.device("cpu"), torch.float32) for variant in ("sd", "sdxl")}


def eager_unet(parts: DiffusionComponents, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    added = {"text_embeds": inputs["text_embeds"], "time_ids": inputs["time_ids"]} if parts.is_sdxl else None
    with torch.inference_mode():
        return parts.unet(inputs["sample"], inputs["timestep"], encoder_hidden_states=inputs["encoder_hidden_states"],
                          added_cond_kwargs=added, return_dict=False)[0]


def bucketed_unet(parts: DiffusionComponents, buckets: tuple[int, ...]) -> UNetRunner:
    runner = UNetRunner(parts.unet, "default")
    example = unet_inputs(parts, 1, seed=99)
    with torch.inference_mode():
        call = BucketedCall(runner.run_eager, example, buckets, use_graphs=False, channels_last=("sample",))
    runner.calls[tuple(example["sample"].shape[-2:])] = call
    return runner


def run_runner(runner: UNetRunner, parts: DiffusionComponents, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    added = {"text_embeds": inputs["text_embeds"], "time_ids": inputs["time_ids"]} if parts.is_sdxl else None
    with torch.inference_mode():
        return runner(inputs["sample"], inputs["timestep"], encoder_hidden_states=inputs["encoder_hidden_states"],
                      added_cond_kwargs=added, return_dict=False)[0]


# ---------------------------------------------------------------------------------------------
# Buckets


def test_buckets_are_powers_of_two_and_their_half_steps_up_to_max_rows() -> None:
    assert bucket_sizes(1) == (1,)
    assert bucket_sizes(2) == (1, 2)
    assert bucket_sizes(8) == (1, 2, 4, 6, 8)
    assert bucket_sizes(6) == (1, 2, 4, 6)
    assert bucket_sizes(5) == (1, 2, 4, 5)
    assert bucket_sizes(32) == (1, 2, 4, 6, 8, 12, 16, 24, 32)
    with pytest.raises(ValueError, match="max_rows"):
        bucket_sizes(0)


def test_vae_buckets_are_one_image_when_compiled_else_held_to_rows_and_pixels() -> None:
    """Compiled, the decoder is captured for one image only and decodes a batch image by image (faster
    per image than its symbolic-count compile, and one compile less); uncompiled, its buckets go up to
    vae_max_rows, the UNet's rows and vae_max_pixels."""
    assert vae_bucket_sizes(EngineOptions(compile=True), 16, 512, 512) == (1,)
    assert vae_bucket_sizes(EngineOptions(compile=True), 16, 1024, 1024) == (1,)
    assert vae_bucket_sizes(EngineOptions(), 16, 512, 512) == (1, 2, 4)
    assert vae_bucket_sizes(EngineOptions(), 16, 1024, 1024) == (1, 2)
    assert vae_bucket_sizes(EngineOptions(), 2, 512, 512) == (1, 2)
    assert vae_bucket_sizes(EngineOptions(compile=True, cuda_graphs=False), 16, 512, 512) == (1, 2, 4)
    # Without the decoder's graphs it is not compiled either: batches decode whole, eagerly
    assert vae_bucket_sizes(EngineOptions(compile=True, vae_graphs=False), 16, 512, 512) == (1, 2, 4)


def test_pick_bucket_takes_the_smallest_that_holds_the_rows() -> None:
    assert [pick_bucket(rows, (1, 2, 4, 8)) for rows in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, None]


def test_chunks_cover_every_row_once() -> None:
    assert chunks(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert chunks(4, 4) == [(0, 4)]


# ---------------------------------------------------------------------------------------------
# Runners (graphs off): padded to a bucket, sliced back, same numbers as the eager model


@pytest.mark.parametrize("variant", ["sd", "sdxl"])
def test_padded_unet_rows_equal_the_unpadded_call(components: dict[str, DiffusionComponents], variant: str) -> None:
    parts = components[variant]
    runner = bucketed_unet(parts, (1, 2, 4))
    # 4 rows first, so that the 3- and 1-row calls run over stale padding rows.
    for rows in (4, 3, 1, 2):
        inputs = unet_inputs(parts, rows, seed=rows)
        torch.testing.assert_close(run_runner(runner, parts, inputs), eager_unet(parts, inputs), **TOLERANCE)


def test_unet_runner_takes_a_scalar_timestep_and_returns_a_dict_when_asked(components: dict[str, DiffusionComponents]) -> None:
    parts = components["sd"]
    runner = bucketed_unet(parts, (1, 2))
    inputs = unet_inputs(parts, 2)
    with torch.inference_mode():
        output = runner(inputs["sample"], torch.tensor(500), encoder_hidden_states=inputs["encoder_hidden_states"])
    expected = eager_unet(parts, {**inputs, "timestep": torch.tensor([500.0, 500.0])})
    torch.testing.assert_close(output.sample, expected, **TOLERANCE)


def test_unet_runner_runs_eagerly_past_the_largest_bucket_and_for_other_sizes(
    components: dict[str, DiffusionComponents],
) -> None:
    parts = components["sd"]
    runner = bucketed_unet(parts, (1, 2))
    inputs = unet_inputs(parts, 3)
    torch.testing.assert_close(run_runner(runner, parts, inputs), eager_unet(parts, inputs), **TOLERANCE)
    smaller = {**inputs, "sample": inputs["sample"][:, :, :8, :8]}
    torch.testing.assert_close(run_runner(runner, parts, smaller), eager_unet(parts, smaller), **TOLERANCE)


def test_unet_runner_hands_attributes_to_the_model(components: dict[str, DiffusionComponents]) -> None:
    parts = components["sdxl"]
    runner = UNetRunner(parts.unet, "default")
    assert runner.config is parts.unet.config
    assert runner.dtype == parts.unet.dtype
    assert runner.add_embedding is parts.unet.add_embedding
    assert runner.model is parts.unet


def test_vae_runner_decodes_in_bucket_chunks_like_the_vae(components: dict[str, DiffusionComponents]) -> None:
    parts = components["sd"]
    runner = VaeRunner(parts.vae, "default")
    size = parts.default_image_size // parts.vae_scale_factor
    latents = torch.randn((5, 4, size, size), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        runner.calls[(size, size)] = BucketedCall(runner.run_eager, {"latents": latents[:1]}, (1, 2), use_graphs=False)
        decoded = runner.decode(latents, return_dict=False)[0]
        expected = parts.vae.decode(latents, return_dict=False)[0]
        as_dict = runner.decode(latents[:1]).sample
    torch.testing.assert_close(decoded, expected, **VAE_TOLERANCE)
    torch.testing.assert_close(as_dict, expected[:1], **VAE_TOLERANCE)


@pytest.mark.parametrize("variant", ["sd", "sdxl"])
def test_pipeline_on_runners_makes_the_eager_images(components: dict[str, DiffusionComponents], variant: str) -> None:
    parts = components[variant]
    size = parts.default_image_size // parts.vae_scale_factor
    vae = VaeRunner(parts.vae, "default")
    with torch.inference_mode():
        vae.calls[(size, size)] = BucketedCall(
            vae.run_eager, {"latents": torch.zeros((1, 4, size, size))}, (1, 2), use_graphs=False
        )
    wrapped = dataclasses.replace(parts, unet=bucketed_unet(parts, (1, 2, 4)), vae=vae)
    requests = [GenerationRequest(prompts=["a photo of the cat"], seed=5), GenerationRequest(prompts=["a dog"], seed=6)]
    settings = GenerationSettings(height=parts.default_image_size, width=parts.default_image_size, steps=3,
                                  guidance_scale=7.5)
    expected = TextToImagePipeline(parts)(requests, settings)
    got = TextToImagePipeline(wrapped)(requests, settings)
    for mine, reference in zip(got, expected, strict=True):
        assert np.abs(mine.astype(int) - reference.astype(int)).max() <= 1


# ---------------------------------------------------------------------------------------------
# prepare on the CPU, the backend's call, the build command


def test_prepare_on_cpu_returns_the_components_unchanged(
    components: dict[str, DiffusionComponents], tmp_path: Path
) -> None:
    parts = components["sd"]
    prepared, report = prepare_with_report(parts, CPU, engine_dir=tmp_path / "engine", max_rows=4)
    assert prepared is parts
    assert report.status == "cpu"
    assert not (tmp_path / "engine").exists()
    assert prepare(parts, CPU) is parts


def test_prepare_for_model_on_cpu_returns_the_components_unchanged(
    components: dict[str, DiffusionComponents], tmp_path: Path
) -> None:
    parts = components["sdxl"]
    config = {"max_batch_size": 4}
    parameters = {"image_height": "128", "image_width": "oops", "force_engine_build": "true"}
    assert prepare_for_model(parts, CPU, tmp_path, config, parameters) is parts


@pytest.mark.parametrize(("value", "forced"), [("", False), ("false", False), ("true", True), ("TRUE", True)])
def test_force_engine_build_parameter(value: str, forced: bool) -> None:
    assert engine_build.is_forced({"force_engine_build": value}) is forced


@pytest.mark.parametrize(("value", "compiled"), [("", False), ("False", False), ("true", True), ("True", True)])
def test_engine_compile_parameter(value: str, compiled: bool) -> None:
    assert engine_build.engine_options({"engine_compile": value}).compile is compiled


@pytest.mark.parametrize("value", ["1", "yes", "on"])
def test_engine_booleans_parse_like_every_other_boolean(value: str) -> None:
    with pytest.raises(ValueError, match=f"config parameter 'engine_compile' must be \"true\" or \"false\", got '{value}'"):
        engine_build.engine_options({"engine_compile": value})


def tracing_backend() -> tuple[list[torch.fx.GraphModule], Any]:
    """A torch.compile backend that records each graph dynamo traces and runs it as traced,
    after a reset, so only this test's traces count."""
    torch._dynamo.reset()
    traces: list[torch.fx.GraphModule] = []

    def backend(graph: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Any:
        traces.append(graph)
        return graph.forward

    return traces, backend


@pytest.mark.parametrize("rows_in_order", [(8, 4, 2, 3, 1), (1, 2, 4)], ids=["largest-first", "one-row-first"])
@pytest.mark.parametrize("variant", ["sd", "sdxl"])
def test_compiled_unet_is_traced_once_for_every_row_count(
    components: dict[str, DiffusionComponents], variant: str, rows_in_order: tuple[int, ...]
) -> None:
    """The engine compiles the UNet with the row count symbolic, so every bucket shares one
    compiled graph (a trace per bucket would multiply the minutes a first build takes), one row
    (guidance off, or outside a guidance interval) included, whichever row count comes first."""
    parts = components[variant]
    traces, counting_backend = tracing_backend()
    runner = UNetRunner(parts.unet, "default", compiled=torch.compile(plain_forward, backend=counting_backend))
    for rows in rows_in_order:
        inputs = unet_inputs(parts, rows, seed=rows)
        with torch.inference_mode():
            output = runner.run_captured(**inputs)
        torch.testing.assert_close(output, eager_unet(parts, inputs), **TOLERANCE)
    assert len(traces) == 1
    torch._dynamo.reset()


def test_a_unet_compiled_ahead_of_time_at_one_row_serves_more_rows(components: dict[str, DiffusionComponents]) -> None:
    """Compiled ahead of time (no guards, dispatched by input signature), the forward a one-row
    call compiled is the one later row counts run: one compile, each row count as eager computes it."""
    parts = components["sd"]
    torch._dynamo.reset()
    forward = PrecompiledForward("unet", plain_forward, None, {"gpu": "cpu"}, backend="aot_eager")
    runner = UNetRunner(parts.unet, "default", compiled=forward)
    for rows in (1, 3, 2):
        inputs = unet_inputs(parts, rows, seed=rows)
        with torch.inference_mode():
            output = runner.run_captured(**inputs)
        torch.testing.assert_close(output, eager_unet(parts, inputs), **TOLERANCE)
    assert list(forward.sources.values()) == ["compiled"]
    torch._dynamo.reset()


@pytest.mark.parametrize("variant", ["sd", "sdxl"])
def test_feature_caching_runner_keeps_and_reuses_features_through_its_buckets(
    components: dict[str, DiffusionComponents], variant: str
) -> None:
    """With feature caching the bucketed call is the split forward (prediction and deep features),
    the plain call takes its prediction, and the reuse buckets run the outer blocks on kept
    features: each as the eager model computes it, padded rows or not; compiled, the full and the
    reuse forward are each traced once for every row count, one row included."""
    parts = components[variant]
    traces, counting_backend = tracing_backend()
    runner = UNetRunner(parts.unet, "default", keeps_features=True,
                        compiled=torch.compile(feature_cache.forward_keeping_features, backend=counting_backend),
                        compiled_reuse=torch.compile(feature_cache.forward_from_features, backend=counting_backend))
    example = unet_inputs(parts, 1, seed=99)
    added = {"text_embeds": example["text_embeds"], "time_ids": example["time_ids"]} if parts.is_sdxl else None
    with torch.inference_mode():
        _, features = feature_cache.forward_keeping_features(parts.unet, example["sample"], example["timestep"],
                                                             example["encoder_hidden_states"], added)
        size = tuple(example["sample"].shape[-2:])
        runner.calls[size] = BucketedCall(runner.run_captured, example, (1, 2, 4), use_graphs=False)
        runner.reuse_calls[size] = BucketedCall(runner.run_reuse_captured, {**example, "features": features}, (1, 2, 4),
                                                use_graphs=False)
    for rows in (4, 3, 1, 2):
        inputs = unet_inputs(parts, rows, seed=rows)
        added = {"text_embeds": inputs["text_embeds"], "time_ids": inputs["time_ids"]} if parts.is_sdxl else None
        expected = eager_unet(parts, inputs)
        torch.testing.assert_close(run_runner(runner, parts, inputs), expected, **TOLERANCE)
        with torch.inference_mode():
            noise, kept = runner.forward_keeping_features(inputs["sample"], inputs["timestep"],
                                                          inputs["encoder_hidden_states"], added)
            reused = runner.forward_from_features(inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"],
                                                  kept, added)
        assert kept.shape[0] == rows
        torch.testing.assert_close(noise, expected, **TOLERANCE)
        torch.testing.assert_close(reused, expected, **TOLERANCE)
    assert len(traces) == 2
    torch._dynamo.reset()


@pytest.mark.parametrize("variant", ["sd", "sdxl"])
def test_compiled_vae_decoder_is_traced_once_for_one_image_and_once_for_more(
    components: dict[str, DiffusionComponents], variant: str
) -> None:
    """One image, the usual decode, gets its own compiled graph; every bucket of two and up shares
    another, with the row count symbolic."""
    parts = components[variant]
    traces, counting_backend = tracing_backend()
    runner = VaeRunner(parts.vae, "default", compiled=torch.compile(decode_forward, backend=counting_backend))
    size = parts.default_image_size // parts.vae_scale_factor
    for rows in (4, 2, 3, 1):
        latents = torch.randn((rows, 4, size, size), generator=torch.Generator().manual_seed(rows))
        with torch.inference_mode():
            decoded = runner.run_captured(latents)
            expected = parts.vae.decode(latents, return_dict=False)[0]
        torch.testing.assert_close(decoded, expected, **VAE_TOLERANCE)
    assert len(traces) == 2
    torch._dynamo.reset()


@pytest.mark.parametrize(
    ("vae_dtype", "capability", "bfloat16_vae", "decoded"),
    [
        (torch.float32, (9, 0), True, torch.bfloat16),  # SDXL's upcast VAE on an H100
        (torch.float32, (8, 0), True, torch.bfloat16),  # an A100
        (torch.float32, (7, 5), True, torch.float32),  # a T4 only emulates bfloat16: float32 stays
        (torch.float32, (9, 0), False, torch.float32),  # turned off
        (torch.float16, (9, 0), True, torch.float16),  # an SD 1.5 VAE already runs in float16
    ],
)
def test_a_float32_vae_decodes_in_bfloat16_where_the_gpu_has_it(
    monkeypatch: pytest.MonkeyPatch, vae_dtype: torch.dtype, capability: tuple[int, int], bfloat16_vae: bool,
    decoded: torch.dtype,
) -> None:
    asked: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: asked.append(device) or capability)
    options = EngineOptions(bfloat16_vae=bfloat16_vae)
    assert vae_decode_dtype(vae_dtype, options, torch.device("cuda", 1)) == decoded
    assert asked in ([], [torch.device("cuda", 1)])  # the model's own GPU is the one asked


def test_build_command_without_gpu_has_nothing_to_build(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert engine_build.main(["--model-dir", str(tmp_path), "--version", "1"]) == 0
    assert "nothing to build" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# engine.json: when an engine is current


def expected_metadata(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "format": metadata.FORMAT_VERSION, "torch": "2.11.0", "cuda": "13.0", "cudnn": 91000, "gpu": "NVIDIA H100",
        "capability": "9.0", "config_hash": "c0ffee", "weights_hash": "beef", "buckets": [1, 2, 4],
        "vae_buckets": [1, 2], "height": 512, "width": 512, "fp8": "off",
    }
    return {**base, **changes}


def test_a_model_config_hashes_the_same_in_every_process(tiny_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    """diffusers records the config keys it defaulted (those a checkpoint's config.json leaves out, as
    older ones do) in set order, which changes with the process's hash seed; the engine hashes the
    config without that list, so a restarted backend finds its engine current."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dirs["sdxl"], model)
    config_path = model / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    for key in ("dropout", "conv_in_kernel", "conv_out_kernel", "upcast_attention"):
        config.pop(key)
    config_path.write_text(json.dumps(config))
    script = (
        "import sys, json; from diffusers import AutoencoderKL, UNet2DConditionModel; "
        "from sdserve_backend.engine import metadata; "
        "configs = [UNet2DConditionModel.from_pretrained(sys.argv[1], subfolder='unet').config, "
        "AutoencoderKL.from_pretrained(sys.argv[1], subfolder='vae').config]; "
        "print(json.dumps([len(configs[0].get('_use_default_values', [])), "
        "metadata.stable_hash([metadata.config_fields(c) for c in configs])]))"
    )
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PYTHON_SOURCE), os.environ.get("PYTHONPATH", "")])}
    answers = []
    for seed in ("1", "2"):
        completed = subprocess.run([sys.executable, "-c", script, str(model)], check=True,
                                   capture_output=True, text=True, env={**environment, "PYTHONHASHSEED": seed})
        answers.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    defaulted, first_hash = answers[0]
    assert defaulted >= 2  # the unordered list is there to be left out
    assert answers[1][1] == first_hash


def test_a_recorded_engine_is_current_until_a_key_field_changes(tmp_path: Path) -> None:
    metadata.write_metadata(tmp_path, {**expected_metadata(), "choices": {"attention": "flash"}, "seconds": {"total": 3}})
    recorded = metadata.read_metadata(tmp_path)
    assert metadata.is_current(recorded, expected_metadata())
    assert metadata.stale_fields(recorded, expected_metadata(torch="2.12.0", gpu="NVIDIA H200")) == ["torch", "gpu"]
    assert metadata.stale_fields(recorded, expected_metadata(buckets=(1, 2, 4, 8))) == ["buckets"]
    assert metadata.stale_fields(recorded, expected_metadata(weights_hash="other")) == ["weights_hash"]


def test_an_engine_built_in_float16_is_stale_where_fp8_applies(tmp_path: Path) -> None:
    """The "fp8" key field is the mode the engine was built in; an engine.json that recorded the mode
    asked for there while FP8 stayed off (its choices say "off") is stale where FP8 applies."""
    metadata.write_metadata(tmp_path, {**expected_metadata(fp8="static"), "choices": {"attention": "flash", "fp8": "off"}})
    recorded = metadata.read_metadata(tmp_path)
    assert metadata.stale_fields(recorded, expected_metadata(fp8="static")) == ["fp8"]
    built_fp8 = {**expected_metadata(fp8="static"), "choices": {"attention": "flash", "fp8": "static"}}
    assert metadata.is_current(built_fp8, expected_metadata(fp8="static"))
    assert metadata.stale_fields(built_fp8, expected_metadata(fp8="off")) == ["fp8"]


def test_a_missing_or_unreadable_engine_is_stale(tmp_path: Path) -> None:
    assert metadata.read_metadata(tmp_path) is None
    assert metadata.stale_fields(None, expected_metadata()) == list(metadata.KEY_FIELDS)
    (tmp_path / ENGINE_FILE).write_text("{not json")
    assert metadata.read_metadata(tmp_path) is None


def test_weights_fingerprint_follows_names_sizes_and_contents_not_path_or_mtime(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    (weights / "unet").mkdir(parents=True)
    model = weights / "unet" / "model.safetensors"
    model.write_bytes(b"header" + bytes(300_000) + b"tail")
    first = metadata.weights_fingerprint(weights)
    assert metadata.weights_fingerprint(weights) == first
    # the same weights elsewhere, with other modification times: the same engine
    elsewhere = tmp_path / "mounted" / "somewhere" / "else"
    shutil.copytree(weights, elsewhere)
    os.utime(elsewhere / "unet" / "model.safetensors", ns=(1, 1))
    assert metadata.weights_fingerprint(elsewhere) == first
    # a changed head, tail, size or name is other weights
    model.write_bytes(b"HEADER" + bytes(300_000) + b"tail")
    assert metadata.weights_fingerprint(weights) != first
    model.write_bytes(b"header" + bytes(300_000) + b"TAIL")
    assert metadata.weights_fingerprint(weights) != first
    model.write_bytes(b"header" + bytes(300_001) + b"tail")
    assert metadata.weights_fingerprint(weights) != first
    model.write_bytes(b"header" + bytes(300_000) + b"tail")
    assert metadata.weights_fingerprint(weights) == first
    model.rename(weights / "unet" / "other.safetensors")
    assert metadata.weights_fingerprint(weights) != first
    # one checkpoint file: by its name and contents, wherever it is
    single = tmp_path / "a" / "model.safetensors"
    single.parent.mkdir()
    single.write_bytes(b"1234")
    copied = tmp_path / "b" / "model.safetensors"
    copied.parent.mkdir()
    shutil.copy(single, copied)
    assert metadata.weights_fingerprint(single) == metadata.weights_fingerprint(copied)
    assert metadata.weights_fingerprint(None) == "unknown"


def test_engine_dir_is_per_model_and_version_under_the_cache_folder(tmp_path: Path) -> None:
    version_dir = tmp_path / "repository" / "sd" / "1"
    cache = tmp_path / "cache"
    assert engine_dir_for("sd", "1", version_dir, {}, cache) == cache / "sd" / "1"
    assert engine_dir_for("sd", "1", version_dir, {"engine_cache_dir": ""}, str(cache)) == cache / "sd" / "1"
    # the model's parameter wins: absolute as it is, relative under the server's folder
    own = tmp_path / "own"
    assert engine_dir_for("sd", "2", version_dir, {"engine_cache_dir": str(own)}, cache) == own / "sd" / "2"
    assert engine_dir_for("sd", "2", version_dir, {"engine_cache_dir": "fast"}, cache) == cache / "fast" / "sd" / "2"
    # neither: inside the version folder, as before the cache folder existed
    assert engine_dir_for("sd", "1", version_dir, {}, None) == version_dir / "engine"


def test_weights_fingerprint_leaves_out_the_engine_folder_inside_the_weights(tmp_path: Path) -> None:
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "model.safetensors").write_bytes(b"1234")
    before = metadata.weights_fingerprint(tmp_path, ignore=tmp_path / "engine")
    metadata.write_metadata(tmp_path / "engine", expected_metadata())
    assert metadata.weights_fingerprint(tmp_path, ignore=tmp_path / "engine") == before
    assert metadata.weights_fingerprint(tmp_path) != before


def test_metadata_is_written_as_json(tmp_path: Path) -> None:
    path = metadata.write_metadata(tmp_path / "engine", {**expected_metadata(), "buckets": (1, 2)})
    assert json.loads(path.read_text())["buckets"] == [1, 2]
    assert [p.name for p in (tmp_path / "engine").iterdir()] == [ENGINE_FILE]


def test_engine_sizes_parameter_lists_the_sizes_to_capture_besides_the_default() -> None:
    from sdserve_backend.backends.diffusion import settings as model_settings

    defaults = model_settings.read_model_defaults({"engine_sizes": "768x768, 512X768,768x768"}, 512)
    assert defaults.engine_sizes == ((768, 768), (512, 768))
    assert model_settings.read_model_defaults({}, 512).engine_sizes == ()
    with pytest.raises(ValueError, match="'engine_sizes' must be sizes like 768x768 separated by commas, got '768'"):
        model_settings.read_model_defaults({"engine_sizes": "768"}, 512)
    with pytest.raises(ValueError, match="'engine_sizes' must be a multiple of 8 from 8 to 4096, got '770'"):
        model_settings.read_model_defaults({"engine_sizes": "770x768"}, 512)


def test_feature_caching_parameter_turns_on_the_engines_caching_graphs() -> None:
    assert engine_build.engine_options({"cache_interval": "3"}).feature_cache is True
    assert engine_build.engine_options({"cache_interval": "1"}).feature_cache is False
    assert engine_build.engine_options({}).feature_cache is False
