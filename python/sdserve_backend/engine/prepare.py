"""`prepare`: turn loaded components into engine-backed ones on CUDA (unchanged on the CPU).

The build on CUDA, in order:
1. fuse the attention projections (one QKV matmul instead of three; same arithmetic);
2. choose the attention backend and the memory format of UNet and VAE by timing the candidates
   through a captured graph (or reuse the choices of a current `engine/engine.json`);
3. with `fp8` "static" (opt-in, compiled engines on compute capability 8.9 and up), convert the
   UNet's transformer-block Linear layers to float8 with activation scales calibrated on the
   model's own prompt embeddings (`engine/fp8.py`): a fast mode, not float16's arithmetic;
4. capture one CUDA graph per row-count bucket for the UNet and the VAE decoder; with
   `compile` (opt-in) both are first compiled by torch.compile ahead of time, the compiled code
   kept in `engine/precompiled/` and the Inductor cache in `engine/inductor/`, so that a restart
   loads them instead of tracing and compiling again;
5. record what the engine was built for in `engine/engine.json`.
Everything here but FP8 keeps float16 arithmetic of the same model, except that a VAE kept in float32
(SDXL's, which overflows in float16) decodes in bfloat16: float32's range at half the bytes, images
within ~45 dB PSNR of float32's. So images stay within tolerance of the eager pipeline's, and these
optimizations are on by default.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from sdserve_backend.engine import fp8, metadata
from sdserve_backend.engine.attention import ATTENTION_BACKENDS
from sdserve_backend.engine.buckets import bucket_sizes
from sdserve_backend.engine.precompiled import PRECOMPILED_SUBDIR, PrecompiledForward, prune
from sdserve_backend.engine.runners import UNetRunner, VaeRunner, decode_forward, plain_forward
from sdserve_backend.engine.static_call import BucketedCall
from sdserve_backend.pipelines import feature_cache
from sdserve_backend.pipelines.components import DiffusionComponents
from sdserve_backend.pipelines.device import Placement

# Setting SDSERVE_ENGINE=0 turns the engine off (components stay eager), e.g. to compare.
DISABLE_VARIABLE = "SDSERVE_ENGINE"
TEXT_SEQUENCE_LENGTH = 77
INDUCTOR_CACHE_VARIABLE = "TORCHINDUCTOR_CACHE_DIR"
INDUCTOR_SUBDIR = "inductor"


@dataclass(frozen=True)
class EngineOptions:
    cuda_graphs: bool = True
    fuse_qkv: bool = True
    # "auto" measures flash against cuDNN attention; or one of ATTENTION_BACKENDS.
    attention: str = "auto"
    # "auto" measures both memory formats; "on" / "off" force one.
    channels_last: str = "auto"
    vae_graphs: bool = True
    # Decoding batches above this run in chunks: each VAE bucket's graph holds its activations,
    # so the largest bucket is also held to vae_max_pixels (an SDXL decode in float32 at 1024x1024
    # takes about 6 GiB per image). A compiled engine captures one image only (`vae_bucket_sizes`).
    vae_max_rows: int = 4
    vae_max_pixels: int = 2 * 1024 * 1024
    tune_repeats: int = 10
    # Decode with a float32 VAE in bfloat16 where the GPU computes it natively (compute capability 8
    # and up): SDXL at 1024x1024 1.4x faster, 3.3x with the decoder compiled.
    bfloat16_vae: bool = True
    # torch.compile the UNet and the VAE decoder before capturing them (Inductor's fused kernels);
    # costs minutes on the first build, seconds on a restart with the cache in the engine folder.
    compile: bool = False
    # With `compile`: compile ahead of time, keeping the compiled code in the engine folder
    # (`precompiled.py`), so a restart loads it instead of tracing the models again.
    precompiled: bool = True
    # Capture (and compile) the feature-caching forwards (pipelines/feature_cache.py): the full
    # graphs also return the deep features, and each bucket gets a graph of the outer blocks.
    feature_cache: bool = False
    # "static": the UNet's transformer-block Linear layers in FP8 with calibrated activation scales
    # (engine/fp8.py), where it pays: compiled, on compute capability 8.9 and up; "off": float16.
    fp8: str = "off"


@dataclass
class EngineReport:
    """What `prepare` did; `sdserve build` and the benchmark print it."""

    status: str  # "cpu" | "disabled" | "built" | "reused"
    reason: str = ""
    choices: dict[str, Any] = field(default_factory=dict)
    tuning_ms: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    buckets: tuple[int, ...] = ()
    vae_buckets: tuple[int, ...] = ()
    metadata_path: str | None = None
    # With `compile`: per forward, per input signature, "loaded", "compiled" or "torch.compile".
    precompiled: dict[str, dict[str, str]] = field(default_factory=dict)


def prepare(components: DiffusionComponents, placement: Placement, **kwargs: Any) -> DiffusionComponents:
    """`prepare_with_report` without the report."""
    return prepare_with_report(components, placement, **kwargs)[0]


def prepare_with_report(
    components: DiffusionComponents,
    placement: Placement,
    engine_dir: Path | None = None,
    max_rows: int = 2,
    height: int | None = None,
    width: int | None = None,
    force_rebuild: bool = False,
    weights: Path | None = None,
    options: EngineOptions | None = None,
    log: Callable[[str], None] | None = None,
    extra_sizes: tuple[tuple[int, int], ...] = (),
) -> tuple[DiffusionComponents, EngineReport]:
    """Components whose `unet` and `vae` run through the engine, and what was done.

    `max_rows` is the most UNet rows one call takes (2 x max_batch_size with guidance); graphs are
    captured for images of `height` x `width` (the model's default size when None) and of each
    (height, width) of `extra_sizes` (compiled, each size is a compile of its own); other sizes run
    eagerly. `force_rebuild` re-measures the choices even when `engine_dir` holds a current engine.
    """
    options = options or EngineOptions()
    say = log or (lambda message: None)
    _check_options(options, max_rows)
    fp8_off = fp8_off_reason(options, placement.device)
    if fp8_off is not None:
        # One line, and the load goes on in float16: a config meant for FP8 GPUs loads anywhere.
        say(f"engine: engine_fp8 {options.fp8!r} is off: {fp8_off}")
    uses_fp8 = options.fp8 != "off" and fp8_off is None
    # The mode the engine is built in, not the one asked for: an engine built in float16 because
    # FP8 was off must not count as current for a later process where FP8 applies.
    fp8_mode = options.fp8 if uses_fp8 else "off"
    if placement.device.type != "cuda" or not torch.cuda.is_available():
        return components, EngineReport(status="cpu", reason="no CUDA device: the components stay as they are")
    if engine_disabled():
        return components, EngineReport(status="disabled", reason=f"{DISABLE_VARIABLE} is off")
    height = height or components.default_image_size
    width = width or components.default_image_size
    factor = components.vae_scale_factor
    latent_size = (height // factor, width // factor)
    buckets = bucket_sizes(max_rows)
    vae_buckets = vae_bucket_sizes(options, max_rows, height, width)
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    # 1. Fuse the attention projections; the VAE's decoding dtype
    unet, vae = _model(components.unet), _model(components.vae)
    if options.fuse_qkv:
        _fuse_qkv(unet)
        _fuse_qkv(vae)
    vae_dtype = vae_decode_dtype(vae.dtype, options, placement.device)
    if vae.dtype != vae_dtype:
        vae.to(dtype=vae_dtype)
    seconds["fuse"] = time.perf_counter() - started

    # 2. Reuse or measure the choices
    expected = _expected_metadata(components, placement, height, width, buckets, vae_buckets, weights, engine_dir,
                                  options, vae_dtype, fp8_mode)
    expected["extra_sizes"] = [list(size) for size in extra_sizes]
    recorded = metadata.read_metadata(engine_dir) if engine_dir is not None else None
    stale = metadata.stale_fields(recorded, expected)
    reuse = not force_rebuild and not stale and recorded is not None and "choices" in recorded
    report = EngineReport(status="reused" if reuse else "built", buckets=buckets, vae_buckets=vae_buckets)
    report.reason = "current engine.json" if reuse else ("forced" if force_rebuild else f"stale or missing: {', '.join(stale)}")
    say(f"engine: {report.reason}")

    # FP8 before any timing or capture: the choices are measured on the converted UNet
    if uses_fp8:
        stage = time.perf_counter()
        _convert_fp8(components, unet, height, width, Path(engine_dir) if engine_dir is not None else None, reuse, options, say)
        seconds["fp8"] = time.perf_counter() - stage
    stage = time.perf_counter()
    pool = torch.cuda.graph_pool_handle() if options.cuda_graphs else None
    if reuse:
        assert recorded is not None
        choices = dict(recorded["choices"])
    else:
        choices, report.tuning_ms = _tune(components, unet, vae, latent_size, buckets, options, say)
        choices["vae_dtype"] = str(vae_dtype).removeprefix("torch.")
        choices["fp8"] = fp8_mode
    report.choices = choices
    seconds["tune"] = time.perf_counter() - stage

    # 3. Capture the graphs, largest bucket first (compiling the models first when asked)
    stage = time.perf_counter()
    compiled_unet = compiled_reuse = compiled_decode = None
    keeps_features = options.feature_cache and feature_cache.supports(unet)
    # Compiling only pays inside the captured graphs (it is what warms them up, so no request waits
    # for a compile); without graphs the models stay eager.
    if options.compile and options.cuda_graphs:
        if engine_dir is not None:
            # The compiled kernels live with the engine they belong to (this process serves one
            # model). Set before the first compile: Inductor reads it when it writes its caches.
            os.environ[INDUCTOR_CACHE_VARIABLE] = str(Path(engine_dir) / INDUCTOR_SUBDIR)
        compile_forward = _forward_compiler(engine_dir, expected, choices, options, say)
        compiled_unet = compile_forward("unet", feature_cache.forward_keeping_features if keeps_features else plain_forward)
        compiled_reuse = compile_forward("unet_reuse", feature_cache.forward_from_features) if keeps_features else None
        compiled_decode = compile_forward("vae_decode", decode_forward) if options.vae_graphs else None
        say(f"engine: compiling the UNet and the VAE decoder (cache {os.environ.get(INDUCTOR_CACHE_VARIABLE, 'default')}"
            f"{', ahead of time' if options.precompiled else ''})")
    unet_runner = _unet_runner(components, unet, latent_size, buckets, choices, options.cuda_graphs, pool, compiled_unet,
                               keeps_features, compiled_reuse)
    seconds["capture_unet"] = time.perf_counter() - stage
    say(f"engine: captured the UNet for rows {buckets} in {seconds['capture_unet']:.1f} s")
    stage = time.perf_counter()
    vae_runner = _vae_runner(vae, latent_size, vae_buckets, choices, options.cuda_graphs and options.vae_graphs, pool,
                             compiled_decode)
    seconds["capture_vae"] = time.perf_counter() - stage
    say(f"engine: captured the VAE decoder for images {vae_buckets} in {seconds['capture_vae']:.1f} s")
    for extra_height, extra_width in extra_sizes:
        extra_latent = (extra_height // factor, extra_width // factor)
        if extra_latent in unet_runner.calls:
            continue
        stage = time.perf_counter()
        _capture_unet(unet_runner, components, unet, extra_latent, buckets, choices, options.cuda_graphs, pool)
        _capture_vae(vae_runner, vae, extra_latent, vae_bucket_sizes(options, max_rows, extra_height, extra_width), choices,
                     options.cuda_graphs and options.vae_graphs, pool)
        seconds[f"capture_{extra_height}x{extra_width}"] = time.perf_counter() - stage
        say(f"engine: captured the UNet and VAE decoder for {extra_height}x{extra_width} in "
            f"{seconds[f'capture_{extra_height}x{extra_width}']:.1f} s")
    seconds["total"] = time.perf_counter() - started
    report.seconds = seconds
    forwards = [forward for forward in (compiled_unet, compiled_reuse, compiled_decode) if isinstance(forward, PrecompiledForward)]
    if forwards and engine_dir is not None:
        report.precompiled = {forward.name: dict(forward.sources) for forward in forwards}
        removed = prune(Path(engine_dir) / PRECOMPILED_SUBDIR, set().union(*(forward.used_paths() for forward in forwards)))
        say(f"engine: precompiled forwards {report.precompiled}" + (f"; removed {removed} old files" if removed else ""))
    if compiled_unet is not None:
        say(f"engine: ready in {seconds['total']:.1f} s; torch.compile's timers (nested) {_compile_timers()}")

    # 4. Record the engine
    if engine_dir is not None and not reuse:
        data = {**expected, "choices": choices, "tuning_ms": report.tuning_ms, "seconds": seconds,
                "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        report.metadata_path = str(metadata.write_metadata(engine_dir, data))
    elif engine_dir is not None:
        report.metadata_path = str(Path(engine_dir) / metadata.ENGINE_FILE)
    return dataclasses.replace(components, unet=unet_runner, vae=vae_runner), report


def _convert_fp8(components: DiffusionComponents, unet: Any, height: int, width: int, engine_dir: Path | None,
                 reuse: bool, options: EngineOptions, say: Callable[[str], None]) -> None:
    """The UNet's FP8 layers: with the scales a current engine saved, else calibrated (and saved)."""
    stage = time.perf_counter()
    scales_path = engine_dir / fp8.SCALES_FILE if engine_dir is not None else None
    saved = fp8.load_scales(scales_path) if reuse and scales_path is not None else None
    if saved is not None:
        try:
            converted = fp8.quantize_unet_with_scales(unet, saved)
        except ValueError as err:
            say(f"engine: FP8: the saved scales do not fit this UNet ({err}); calibrating again")
        else:
            say(f"engine: FP8 ({options.fp8}): {converted} Linear layers of the UNet's transformer blocks converted "
                f"with the engine's saved scales in {time.perf_counter() - stage:.1f} s")
            return
    calibration = fp8.calibration_inputs(components, unet, height, width)
    converted = fp8.quantize_unet_static(unet, calibration)
    if scales_path is not None:
        scales_path.parent.mkdir(parents=True, exist_ok=True)
        fp8.save_scales(scales_path, fp8.activation_scales(unet))
    say(f"engine: FP8 ({options.fp8}): {converted} Linear layers of the UNet's transformer blocks converted, "
        f"calibrated on {len(calibration)} calls, in {time.perf_counter() - stage:.1f} s")


def _forward_compiler(engine_dir: Path | None, expected: dict[str, Any], choices: dict[str, Any], options: EngineOptions,
                      say: Callable[[str], None]) -> Callable[[str, Callable[..., Any]], Any]:
    """How the engine compiles a forward `function(model, *inputs)`: ahead of time, its artifacts
    in `<engine>/precompiled/` keyed by the engine's own key and choices (`precompiled.py`), or with
    plain torch.compile when `options.precompiled` is off."""
    if not options.precompiled:
        return lambda name, function: torch.compile(function)
    folder = Path(engine_dir) / PRECOMPILED_SUBDIR if engine_dir is not None else None
    key = {field: expected[field] for field in ("torch", "cuda", "cudnn", "gpu", "capability", "config_hash", "weights_hash")}
    key["choices"] = {name: choices.get(name) for name in ("attention", "channels_last", "vae_channels_last", "fused_qkv")}
    if choices.get("fp8", "off") != "off":
        # A forward compiled over the FP8 UNet is another program; float16 keys stay as they were.
        key["fp8"] = choices["fp8"]
    return lambda name, function: PrecompiledForward(name, function, folder, key, say)


def _compile_timers(top: int = 12) -> str:
    """torch.compile's own timers (Dynamo's tracing, Inductor, the cache loads), largest first: where
    a compiled build's or a warm start's seconds go. Informative only: a timer that moved is skipped."""
    try:
        from torch._dynamo.utils import compile_times

        names, values = compile_times(repr="csv", aggregate=True)
        timers = sorted(((float(value), name) for name, value in zip(names, values, strict=True)), reverse=True)
    except Exception:  # noqa: BLE001 - private timers; the build goes on without them
        return "unavailable"
    return ", ".join(f"{name} {seconds:.1f} s" for seconds, name in timers[:top])


def _check_options(options: EngineOptions, max_rows: int) -> None:
    if options.attention != "auto" and options.attention not in ATTENTION_BACKENDS:
        raise ValueError(f"attention must be 'auto' or one of {ATTENTION_BACKENDS}, got {options.attention!r}")
    if options.channels_last not in ("auto", "on", "off"):
        raise ValueError(f"channels_last must be 'auto', 'on' or 'off', got {options.channels_last!r}")
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    if options.fp8 not in fp8.FP8_MODES:
        raise ValueError(f"fp8 must be one of {fp8.FP8_MODES}, got {options.fp8!r}")


def vae_bucket_sizes(options: EngineOptions, max_rows: int, height: int, width: int) -> tuple[int, ...]:
    """The VAE decoder's graph buckets for images of `height` x `width`; larger batches decode in
    chunks of the largest. Compiled, one image only: the one-image compile decodes faster per image
    than a compile with the image count symbolic (H200, 2026-11-28: SD 1.5 at 512² 7.64 ms an image
    against 8.96 in a 4-image call; SDXL at 1024² 33.7 against 43.7 in a 2-image call), and the
    build skips that second compile (20-30 s)."""
    if options.compile and options.cuda_graphs and options.vae_graphs:
        return (1,)
    return bucket_sizes(max(1, min(options.vae_max_rows, max_rows, options.vae_max_pixels // (height * width))))


def engine_disabled() -> bool:
    """True when the environment turns the engine off (`SDSERVE_ENGINE=0`)."""
    return os.environ.get(DISABLE_VARIABLE, "1").strip().lower() in ("0", "off", "false", "no")


def fp8_off_reason(options: EngineOptions, device: torch.device) -> str | None:
    """Why the FP8 the options ask for stays off (None: it applies, or none was asked for). FP8
    pays only with its activation casts fused by torch.compile (`bench/gpu/README.md`, "FP8")."""
    if options.fp8 == "off":
        return None
    if device.type == "cuda" and torch.cuda.is_available() and engine_disabled():
        return f"{DISABLE_VARIABLE} is off"
    reason = fp8.unavailable_reason(device)
    if reason is None and not (options.compile and options.cuda_graphs):
        reason = "it pays only compiled (engine_compile: \"true\"), where torch.compile fuses the activation casts"
    return reason


def vae_decode_dtype(vae_dtype: torch.dtype, options: EngineOptions, device: torch.device) -> torch.dtype:
    """The dtype the engine decodes in: bfloat16 for a float32 VAE on a GPU with bfloat16 tensor
    cores (compute capability 8 and up; older ones only emulate it), else the VAE's own."""
    if options.bfloat16_vae and vae_dtype == torch.float32 and torch.cuda.get_device_capability(device)[0] >= 8:
        return torch.bfloat16
    return vae_dtype


def _model(part: Any) -> Any:
    # Preparing twice wraps the model, not the previous runner.
    return part.model if isinstance(part, (UNetRunner, VaeRunner)) else part


def _fuse_qkv(model: Any) -> None:
    fuse = getattr(model, "fuse_qkv_projections", None)
    if fuse is None or getattr(model, "original_attn_processors", None) is not None:
        return  # no such method in this diffusers, or already fused
    try:
        fuse()
    except ValueError:
        pass  # models with added KV projections cannot be fused; they run unfused


def _expected_metadata(
    components: DiffusionComponents,
    placement: Placement,
    height: int,
    width: int,
    buckets: tuple[int, ...],
    vae_buckets: tuple[int, ...],
    weights: Path | None,
    engine_dir: Path | None,
    options: EngineOptions,
    vae_dtype: torch.dtype,
    fp8_mode: str,
) -> dict[str, Any]:
    """engine.json's key fields; `fp8_mode` is the FP8 mode the engine is built in ("off" where
    `fp8_off_reason` keeps the asked one off)."""
    device = placement.device
    properties = torch.cuda.get_device_properties(device)
    unet, vae = _model(components.unet), _model(components.vae)
    return {
        "format": metadata.FORMAT_VERSION,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "gpu": properties.name,
        "capability": f"{properties.major}.{properties.minor}",
        "config_hash": metadata.stable_hash(
            {"unet": metadata.config_fields(unet.config), "vae": metadata.config_fields(vae.config),
             "dtype": str(placement.dtype),
             "vae_dtype": str(vae_dtype),
             # fp8 is a key field of its own (below), so the hashes of engines built before it stay.
             "options": {name: value for name, value in dataclasses.asdict(options).items() if name != "fp8"}}
        ),
        "weights_hash": metadata.weights_fingerprint(weights, ignore=engine_dir),
        "buckets": list(buckets),
        "vae_buckets": list(vae_buckets),
        "height": height,
        "width": width,
        "fp8": fp8_mode,
    }


def _unet_example(components: DiffusionComponents, unet: Any, latent_size: tuple[int, int]) -> dict[str, torch.Tensor]:
    device, dtype = components.device, unet.dtype
    example = {
        "sample": torch.randn((1, int(unet.config.in_channels), *latent_size), device=device, dtype=dtype),
        "timestep": torch.full((1,), 500.0, device=device),
        "encoder_hidden_states": torch.randn(
            (1, TEXT_SEQUENCE_LENGTH, int(unet.config.cross_attention_dim)), device=device, dtype=dtype
        ),
    }
    if components.is_sdxl:
        time_width = 6 * int(unet.config.addition_time_embed_dim)
        text_width = unet.add_embedding.linear_1.in_features - time_width
        example["text_embeds"] = torch.randn((1, text_width), device=device, dtype=dtype)
        example["time_ids"] = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]], device=device, dtype=components.dtype)
    return example


def _unet_runner(components: DiffusionComponents, unet: Any, latent_size: tuple[int, int], buckets: tuple[int, ...],
                 choices: dict[str, Any], graphs: bool, pool: Any, compiled: Any = None, keeps_features: bool = False,
                 compiled_reuse: Any = None) -> UNetRunner:
    _set_memory_format(unet, choices["channels_last"])
    runner = UNetRunner(unet, choices["attention"], compiled=compiled, keeps_features=keeps_features,
                        compiled_reuse=compiled_reuse)
    _capture_unet(runner, components, unet, latent_size, buckets, choices, graphs, pool)
    return runner


def _capture_unet(runner: UNetRunner, components: DiffusionComponents, unet: Any, latent_size: tuple[int, int],
                  buckets: tuple[int, ...], choices: dict[str, Any], graphs: bool, pool: Any) -> None:
    """The UNet's graphs for one latent size into `runner` (and its feature-caching ones)."""
    keeps_features = runner.keeps_features
    layout = ("sample",) if choices["channels_last"] else ()
    with torch.inference_mode():
        example = _unet_example(components, unet, latent_size)
        call = BucketedCall(runner.run_captured, example, buckets, graphs, channels_last=layout, pool=pool)
        _fill(call, example)
        call.capture()
        runner.calls[latent_size] = call
        if keeps_features:
            _, features = feature_cache.forward_keeping_features(
                unet, example["sample"], example["timestep"], example["encoder_hidden_states"],
                None if "text_embeds" not in example else {"text_embeds": example["text_embeds"], "time_ids": example["time_ids"]})
            example = {**example, "features": features}
            reuse = BucketedCall(runner.run_reuse_captured, example, buckets, graphs,
                                 channels_last=(*layout, "features") if layout else (), pool=pool)
            _fill(reuse, example)
            reuse.capture()
            runner.reuse_calls[latent_size] = reuse


def _vae_runner(vae: Any, latent_size: tuple[int, int], buckets: tuple[int, ...], choices: dict[str, Any],
                graphs: bool, pool: Any, compiled_decode: Any = None) -> VaeRunner:
    _set_memory_format(vae, choices["vae_channels_last"])
    runner = VaeRunner(vae, "default", compiled=compiled_decode)
    _capture_vae(runner, vae, latent_size, buckets, choices, graphs, pool)
    return runner


def _capture_vae(runner: VaeRunner, vae: Any, latent_size: tuple[int, int], buckets: tuple[int, ...],
                 choices: dict[str, Any], graphs: bool, pool: Any) -> None:
    """The VAE decoder's graphs for one latent size into `runner`."""
    with torch.inference_mode():
        example = {"latents": torch.randn((1, int(vae.config.latent_channels), *latent_size), device=vae.device, dtype=vae.dtype)}
        call = BucketedCall(runner.run_captured, example, buckets, graphs,
                            channels_last=("latents",) if choices["vae_channels_last"] else (), pool=pool)
        _fill(call, example)
        call.capture()
    runner.calls[latent_size] = call


def _fill(call: BucketedCall, example: dict[str, torch.Tensor]) -> None:
    # Realistic values in every row of the buffers, so that warm-up and padding rows stay finite.
    for name, buffer in call.buffers.items():
        buffer.copy_(example[name].expand_as(buffer))


def _set_memory_format(model: Any, channels_last: bool) -> None:
    model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _tune(components: DiffusionComponents, unet: Any, vae: Any, latent_size: tuple[int, int], buckets: tuple[int, ...],
          options: EngineOptions, say: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, float]]:
    """Time each candidate on one classifier-free-guidance batch (2 rows) and keep the fastest."""
    attention = ["flash", "cudnn"] if options.attention == "auto" else [options.attention]
    # Compiled, channels_last is the faster UNet layout (SDXL 2 rows on an H200: 31.7 against
    # 33.0 ms, cuDNN's NCHW-to-NHWC conversions gone; SD 1.5 already chose it): the candidates here
    # run uncompiled, where SDXL prefers NCHW, and compiling each candidate would cost minutes.
    layouts = {"auto": [True] if options.compile else [False, True], "on": [True], "off": [False]}[options.channels_last]
    rows = (min(2, buckets[-1]),)
    timings: dict[str, float] = {}
    best: tuple[float, str, bool] | None = None
    for backend in attention:
        for channels_last in layouts:
            if len(attention) * len(layouts) == 1:
                best = (0.0, backend, channels_last)
                continue
            runner = _unet_runner(components, unet, latent_size, rows,
                                  {"attention": backend, "channels_last": channels_last}, options.cuda_graphs, None)
            call = runner.calls[latent_size]
            inputs = {name: buffer for name, buffer in call.buffers.items()}
            milliseconds = _median_ms(lambda: call(inputs), options.tune_repeats)
            name = f"unet rows={rows[0]} attention={backend} channels_last={channels_last}"
            timings[name] = milliseconds
            say(f"engine: {name}: {milliseconds:.2f} ms")
            if best is None or milliseconds < best[0]:
                best = (milliseconds, backend, channels_last)
            del runner, call, inputs
            torch.cuda.empty_cache()
    assert best is not None
    vae_channels_last = options.channels_last == "on"
    if options.channels_last == "auto":
        vae_best: tuple[float, bool] | None = None
        for channels_last in (False, True):
            runner = _vae_runner(vae, latent_size, (1,), {"vae_channels_last": channels_last},
                                 options.cuda_graphs and options.vae_graphs, None)
            call = runner.calls[latent_size]
            inputs = {name: buffer for name, buffer in call.buffers.items()}
            milliseconds = _median_ms(lambda: call(inputs), max(3, options.tune_repeats // 3))
            name = f"vae decode images=1 channels_last={channels_last}"
            timings[name] = milliseconds
            say(f"engine: {name}: {milliseconds:.2f} ms")
            if vae_best is None or milliseconds < vae_best[0]:
                vae_best = (milliseconds, channels_last)
            del runner, call, inputs
            torch.cuda.empty_cache()
        assert vae_best is not None
        vae_channels_last = vae_best[1]
    return {"attention": best[1], "channels_last": best[2], "vae_channels_last": vae_channels_last,
            "fused_qkv": options.fuse_qkv, "cuda_graphs": options.cuda_graphs}, timings


def _median_ms(function: Callable[[], Any], repeats: int) -> float:
    with torch.inference_mode():
        function()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            function()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    return statistics.median(times)
