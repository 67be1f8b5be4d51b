"""The FP8 fast mode (`engine_fp8: "static"`, python/sdserve_backend/engine/fp8.py) on the CPU,
where torchao emulates the float8 arithmetic: the tiny UNets' transformer-block Linear layers the
calls run are converted, and only those; the converted UNet's output stays close to the float one
on inputs it was not calibrated on; layers no calibration call runs (the unfused projections beside
the fused QKV) stay as they are instead of failing the conversion; the config parameter is checked;
and a model asking for FP8 on a server without a CUDA GPU loads, says in one log line that FP8 is
off and why, and serves."""

from __future__ import annotations

import base64
import copy
import io
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdserve_backend.engine import fp8
from sdserve_backend.engine.build import engine_options
from sdserve_backend.engine.prepare import EngineOptions, fp8_off_reason
from sdserve_backend.pipelines import load_components
from sdserve_server import PROJECT_ROOT, ServerAddresses, http_json, serving

# Measured on tiny_sd (float32, CPU): 45-46 dB over the UNet output on held-out inputs.
PSNR_FLOOR_DB = 35.0


def psnr(reference: torch.Tensor, other: torch.Tensor) -> float:
    error = float(((reference - other) ** 2).mean())
    return 10 * float(torch.log10(reference.abs().max() ** 2 / error))


def is_float8(module: torch.nn.Module) -> bool:
    return "float8" in type(module.weight).__name__.lower()


def linear_paths(unet: torch.nn.Module) -> set[str]:
    return {path for path, module in unet.named_modules() if isinstance(module, torch.nn.Linear)}


@pytest.mark.parametrize("variant", ["sd", "sdxl"])
def test_the_called_transformer_block_linears_go_fp8_and_the_output_stays_close(
    tiny_model_dirs: dict[str, Path], variant: str
) -> None:
    components = load_components(tiny_model_dirs[variant], torch.device("cpu"), torch.float32)
    unet = components.unet
    unet.fuse_qkv_projections()  # as the engine does before converting
    size = 64
    calibration = fp8.calibration_inputs(components, unet, size, size, prompts=fp8.CALIBRATION_PROMPTS[:2],
                                         timestep_count=2)
    # Two rows each (the empty prompt's, then the prompt's), every prompt at every timestep
    assert len(calibration) == 4 and all(call["sample"].shape[0] == 2 for call in calibration)
    assert {float(call["timestep"][0]) for call in calibration} == {999.0, 0.0}
    assert ("added_cond_kwargs" in calibration[0]) == (variant == "sdxl")
    # Held out: a prompt and latents the calibration never saw, mid-schedule
    held_out = fp8.calibration_inputs(components, unet, size, size, prompts=["a green cube on a table"],
                                      timestep_count=3)[1:2]
    held_out[0]["sample"] = torch.randn(held_out[0]["sample"].shape, generator=torch.Generator().manual_seed(7))
    reference = copy.deepcopy(unet)

    called = fp8.linears_called(unet, calibration)
    targets = set(fp8.fp8_targets(unet, called))
    converted = fp8.quantize_unet_static(unet, calibration)

    assert converted == len(targets) > 0
    assert all(".transformer_blocks." in path and path.endswith(("to_qkv", "to_kv", "to_q", "to_out.0", "proj", "ff.net.2"))
               for path in targets), sorted(targets)
    modules = dict(unet.named_modules())
    assert {path for path in linear_paths(unet) if is_float8(modules[path])} == targets
    # The fused QKV left the unfused self-attention projections uncalled: they stay float32
    unfused = {path for path in linear_paths(unet) if path.endswith(("attn1.to_q", "attn1.to_k", "attn1.to_v"))}
    assert unfused and not unfused & called and not any(is_float8(modules[path]) for path in unfused)
    # Linear layers outside the transformer blocks (time embedding, ...) stay float32
    assert any("transformer_blocks" not in path for path in called)

    with torch.no_grad():
        for inputs in held_out + calibration[:1]:
            expected = reference(**inputs, return_dict=False)[0]
            actual = unet(**inputs, return_dict=False)[0]
            assert torch.isfinite(actual).all()
            assert psnr(expected, actual) >= PSNR_FLOOR_DB


def test_layers_no_calibration_call_runs_stay_as_they_are(tiny_model_dirs: dict[str, Path]) -> None:
    """A layer the calibration never runs has an observer that saw nothing; it is left out instead
    of failing the conversion (here: every second transformer block's feed-forward is skipped)."""
    components = load_components(tiny_model_dirs["sd"], torch.device("cpu"), torch.float32)
    unet = components.unet
    skipped = [module for path, module in unet.named_modules() if path.endswith("transformer_blocks.0.ff")][::2]
    assert skipped
    for module in skipped:
        module.forward = lambda hidden_states, *args, **kwargs: hidden_states  # type: ignore[method-assign]
    calibration = fp8.calibration_inputs(components, unet, 64, 64, prompts=fp8.CALIBRATION_PROMPTS[:1], timestep_count=1)
    converted = fp8.quantize_unet_static(unet, calibration)
    assert converted > 0
    for module in skipped:
        assert not any(is_float8(layer) for layer in module.modules() if isinstance(layer, torch.nn.Linear))
    # Converting again (an engine prepared twice in one process) finds nothing left to convert
    assert fp8.quantize_unet_static(unet, calibration) == 0
    with torch.no_grad():
        assert torch.isfinite(unet(**calibration[0], return_dict=False)[0]).all()


def test_a_warm_start_converts_with_the_saved_scales_to_the_same_layers_and_outputs(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """The engine folder keeps the calibrated scales; converting a fresh copy of the UNet with them
    gives the calibrated UNet's FP8 layers and exactly its outputs, without a calibration call.
    Neither conversion touches Inductor's process-wide settings (torchao's configs would switch on
    coordinate-descent tuning, which kept an H200's FP8 engine build busy for minutes)."""
    inductor_before = inductor_tuning_settings()
    components = load_components(tiny_model_dirs["sdxl"], torch.device("cpu"), torch.float32)
    unet = components.unet
    unet.fuse_qkv_projections()
    fresh = copy.deepcopy(unet)
    calibration = fp8.calibration_inputs(components, unet, 64, 64, prompts=fp8.CALIBRATION_PROMPTS[:2], timestep_count=2)
    converted = fp8.quantize_unet_static(unet, calibration)
    scales = fp8.activation_scales(unet)
    assert len(scales) == converted > 0
    path = tmp_path / fp8.SCALES_FILE
    fp8.save_scales(path, scales)
    loaded = fp8.load_scales(path)
    assert loaded is not None and loaded.keys() == scales.keys()

    calls: list[str] = []
    hooks = [module.register_forward_hook(lambda *_: calls.append("call")) for module in [fresh]]
    assert fp8.quantize_unet_with_scales(fresh, loaded) == converted
    for hook in hooks:
        hook.remove()
    assert not calls  # no calibration call
    modules, fresh_modules = dict(unet.named_modules()), dict(fresh.named_modules())
    assert {p for p in linear_paths(fresh) if is_float8(fresh_modules[p])} == {p for p in linear_paths(unet) if is_float8(modules[p])}
    with torch.no_grad():
        for inputs in calibration[:2]:
            assert torch.equal(unet(**inputs, return_dict=False)[0], fresh(**inputs, return_dict=False)[0])
    assert inductor_tuning_settings() == inductor_before


def inductor_tuning_settings() -> dict[str, object]:
    from torch._inductor import config

    return {name: getattr(config, name) for name in ("coordinate_descent_tuning", "coordinate_descent_check_all_directions",
                                                     "force_fuse_int_mm_with_mul", "fx_graph_cache")} | \
        {"unique_kernel_names": config.triton.unique_kernel_names}


def test_saved_scales_that_do_not_fit_convert_nothing_and_damaged_files_read_as_none(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    unet = load_components(tiny_model_dirs["sd"], torch.device("cpu"), torch.float32).unet
    path = next(p for p in linear_paths(unet) if ".transformer_blocks." in p)
    scale = torch.ones((1, 1))
    with pytest.raises(ValueError, match="not unconverted Linear"):
        fp8.quantize_unet_with_scales(unet, {path: scale, "down_blocks.0.no_such_layer": scale})
    assert not any(is_float8(module) for module in unet.modules() if isinstance(module, torch.nn.Linear))
    assert fp8.load_scales(tmp_path / "missing.safetensors") is None
    damaged = tmp_path / fp8.SCALES_FILE
    damaged.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert fp8.load_scales(damaged) is None


def test_calibration_needs_inputs() -> None:
    with pytest.raises(ValueError, match="at least one"):
        fp8.quantize_unet_static(torch.nn.Linear(16, 16), [])


def test_the_config_parameter_is_off_or_static() -> None:
    assert engine_options({}).fp8 == "off"
    assert engine_options({"engine_fp8": ""}).fp8 == "off"
    assert engine_options({"engine_fp8": " Static "}).fp8 == "static"
    with pytest.raises(ValueError, match=r"config parameter 'engine_fp8' must be one of 'off', 'static', got 'dynamic'"):
        engine_options({"engine_fp8": "dynamic"})


@pytest.mark.parametrize(
    ("capability", "compile_on", "precompiled", "reason"),
    [
        ((9, 0), True, False, None),  # an H100 or H200, compiled: FP8 applies
        ((8, 9), True, False, None),  # an L4 / RTX 4090
        ((9, 0), True, True, None),  # compiled ahead of time, as a served model's engine is
        ((8, 6), True, False, "compute capability 8.6 has no FP8 tensor cores"),  # an A10 / RTX 3090
        ((8, 0), True, False, "compute capability 8.0 has no FP8 tensor cores"),  # an A100
        ((9, 0), False, False, "it pays only compiled"),
    ],
)
def test_fp8_applies_only_where_it_pays(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], compile_on: bool,
                                        precompiled: bool, reason: str | None) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    found = fp8_off_reason(EngineOptions(fp8="static", compile=compile_on, precompiled=precompiled), torch.device("cuda", 0))
    assert found is None if reason is None else (found is not None and found.startswith(reason)), found
    assert fp8_off_reason(EngineOptions(fp8="off"), torch.device("cuda", 0)) is None


def test_without_cuda_fp8_is_off() -> None:
    assert fp8.unavailable_reason(torch.device("cpu")) == "no CUDA device"


# ---------------------------------------------------------------------------------------------
# Through a real server on the CPU


def fp8_config(fp8_mode: str) -> str:
    """tiny_sd's config at 64x64, 2 steps, compiled, with `engine_fp8` set."""
    config = (PROJECT_ROOT / "model_repository" / "tiny_sd" / "config.pbtxt").read_text()
    config = config.replace('string_value: "128"', 'string_value: "64"')
    config = re.sub(r'(key: "steps"\s*value: \{ string_value: )"[^"]*"', r'\1"2"', config)
    extra = (f'  {{\n    key: "engine_fp8"\n    value: {{ string_value: "{fp8_mode}" }}\n  }},\n'
             '  {\n    key: "engine_compile"\n    value: { string_value: "true" }\n  },\n')
    return config.replace("parameters [\n", "parameters [\n" + extra, 1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerAddresses]:
    repository = tmp_path_factory.mktemp("fp8_server") / "repo"
    for name, mode in (("tiny_fp8", "static"), ("tiny_fp8_bad", "dynamic")):
        (repository / name).mkdir(parents=True)
        (repository / name / "1").symlink_to(PROJECT_ROOT / "model_repository" / "tiny_sd" / "1")
        (repository / name / "config.pbtxt").write_text(fp8_config(mode))
    with serving(repository) as addresses:
        yield addresses


def test_a_model_asking_for_fp8_on_a_cpu_server_says_it_is_off_and_serves(server: ServerAddresses) -> None:
    status, reply = http_json(server, "POST", "/v2/models/tiny_fp8/generate", {"prompt": "a red circle", "seed": 3})
    assert status == 200, reply
    [encoded] = reply["generated_image"]  # type: ignore[index]
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as made:
        assert np.asarray(made).shape == (64, 64, 3)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any("engine_fp8" in line for line in server.output):
        time.sleep(0.2)
    said = [line for line in server.output if "engine_fp8" in line and "tiny_fp8_bad" not in line]
    assert len([line for line in said if "engine_fp8 'static' is off: no CUDA device" in line]) == 1, said


def test_a_bad_engine_fp8_value_fails_the_load_naming_it(server: ServerAddresses) -> None:
    status, index = http_json(server, "POST", "/v2/repository/index", {})
    assert status == 200
    [entry] = [model for model in index if model["name"] == "tiny_fp8_bad"]  # type: ignore[union-attr]
    assert entry["state"] == "UNAVAILABLE"
    assert "'engine_fp8' must be one of 'off', 'static', got 'dynamic'" in entry["reason"]


class _Blocks(torch.nn.Module):
    """A stand-in UNet: Linear layers inside `transformer_blocks`, one of them 128 x 128."""

    def __init__(self) -> None:
        super().__init__()
        self.transformer_blocks = torch.nn.ModuleList([torch.nn.Linear(128, 128), torch.nn.Linear(128, 256)])

    def forward(self, sample: torch.Tensor, return_dict: bool = False) -> tuple[torch.Tensor]:
        return (self.transformer_blocks[1](self.transformer_blocks[0](sample)),)


def test_a_128_by_128_weight_stays_as_it_is() -> None:
    """torchao 0.18 reads the per-tensor scale of a 128 x 128 weight as its 128 x 128 block scaling
    and fails the call after: such a layer is left out (shapes_sd has some), the others convert."""
    model = _Blocks()
    calibration = [{"sample": torch.randn(2, 77, 128, generator=torch.Generator().manual_seed(seed))} for seed in (0, 1)]
    reference = copy.deepcopy(model)
    assert fp8.quantize_unet_static(model, calibration) == 1
    assert not is_float8(model.transformer_blocks[0]) and is_float8(model.transformer_blocks[1])
    with torch.no_grad():
        inputs = {"sample": torch.randn(50, 77, 128, generator=torch.Generator().manual_seed(2))}
        assert psnr(reference(**inputs)[0], model(**inputs)[0]) >= PSNR_FLOOR_DB
