#!/usr/bin/env python3
"""Engine techniques measured one at a time, on one GPU, in one process.

    python bench/gpu/techniques.py --case sdxl --out FILE.json [--unet VARIANT,...] [--rows 2,8] [--skip-vae]

Each measurement is one call inside a CUDA graph (as the engine runs it), float16 model with fused
QKV projections and the engine's layout choice for the case:
  vae <dtype> [compiled]   one image decoded in the VAE's own dtype (float32 for an upcast SDXL
                           VAE), in bfloat16, and compiled; PSNR of each image against the VAE's own
                           dtype run eagerly
  unet graph               the UNet as the graphs-only engine runs it (the baseline of the rest)
Then the UNet variants named by --unet, in the order given (default "compiled"):
  cudnn-benchmark          the graph engine with cuDNN's benchmarked convolution choice
  compiled                 torch.compile, default mode: the engine's `engine_compile`
  conv_1x1_as_mm           compiled, 1x1 convolutions lowered to matmuls
  freezing                 compiled with Inductor's freezing: weights become constants, so their
                           layout conversions and constant arithmetic are done once at compile time
  coordinate-descent       compiled with Inductor's coordinate-descent tuning of kernel launch configs
  other-layout             compiled, with the memory format the eager tuning did not pick
  regional                 only the repeated transformer blocks compiled (diffusers'
                           compile_repeated_blocks): far less to compile and to trace again on a
                           warm start, at the cost of the fusions outside the blocks
  regional-resnets         regional, with the ResNet blocks compiled too
The capture seconds of a compiled variant's first row count include its compile (cold caches).
The JSON file is rewritten after every measurement, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as gpu_bench  # noqa: E402

from sdserve_backend.engine.runners import UNetRunner, VaeRunner, plain_forward  # noqa: E402
from sdserve_backend.engine.static_call import BucketedCall  # noqa: E402

LAYOUT = {"sd15": True, "sdxl": False}  # the engine's measured UNet channels_last choice on the H100


class Recorder:
    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {**header, "ms": {}, "mfu": {}, "psnr_db": {}, "seconds": {}}

    def add(self, section: str, name: str, value: float) -> None:
        self.data[section][name] = value
        gpu_bench.log(f"{section} {name}: {value:.3f}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2) + "\n")


def graph_ms(function: Callable[..., torch.Tensor], example: dict[str, torch.Tensor], rows: int,
             channels_last: tuple[str, ...] = ()) -> tuple[float, torch.Tensor]:
    """Mean ms of `function` over `rows` rows, captured in a CUDA graph; and its output."""
    with torch.inference_mode():
        call = BucketedCall(function, example, (rows,), use_graphs=True, channels_last=channels_last)
        for name, buffer in call.buffers.items():
            buffer.copy_(example[name][:1].expand_as(buffer))
        call.capture()
        inputs = {name: buffer for name, buffer in call.buffers.items()}
        milliseconds = gpu_bench.unet_call_ms(lambda: call(inputs), repeats=20)
        output = call(inputs)
    del call
    torch.cuda.empty_cache()
    return milliseconds, output


def to_uint8(images: torch.Tensor) -> Any:
    return ((images.float() * 0.5 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def measure_vae(parts: dict[str, Any], case: dict[str, Any], record: Recorder) -> None:
    vae = parts["vae_sdserve"]
    latent = torch.randn((1, 4, case["height"] // 8, case["width"] // 8), device="cuda",
                         generator=torch.Generator("cuda").manual_seed(3)) * 0.8
    with torch.inference_mode():
        reference = to_uint8(vae.decode(latent.to(vae.dtype), return_dict=False)[0])
    dtypes = [vae.dtype] + ([torch.bfloat16] if vae.dtype != torch.bfloat16 else [])
    for dtype in dtypes:
        vae.to(dtype=dtype)
        variants: list[tuple[str, Any]] = [("", None)]
        if dtype != torch.float32:
            variants.append((" compiled", torch.compile(vae.decode)))
        for suffix, compiled in variants:
            name = f"vae {str(dtype).removeprefix('torch.')}{suffix}"
            runner = VaeRunner(vae, "default")  # the engine's choice for the VAE

            def decode(latents: torch.Tensor, compiled: Any = compiled, runner: VaeRunner = runner) -> torch.Tensor:
                if compiled is None:
                    return runner.run_eager(latents)
                return compiled(latents, return_dict=False)[0]

            started = time.perf_counter()
            milliseconds, images = graph_ms(decode, {"latents": latent.to(dtype)}, 1)
            record.add("seconds", f"{name} capture", time.perf_counter() - started)
            record.add("ms", name, milliseconds)
            record.add("psnr_db", name, gpu_bench.psnr(to_uint8(images), reference))
        torch._dynamo.reset()
    vae.to(dtype=dtypes[0])


def unet_example(parts: dict[str, Any], case: dict[str, Any]) -> dict[str, torch.Tensor]:
    raw = gpu_bench.unet_inputs(parts, case, 1)
    example = {key: value for key, value in raw.items() if key != "added_cond_kwargs"}
    example.update(raw.get("added_cond_kwargs", {}))
    return example


def measure_unet(runner: UNetRunner, parts: dict[str, Any], case: dict[str, Any], record: Recorder, label: str,
                 rows_list: list[int], channels_last: bool, flops: dict[int, float]) -> None:
    example = unet_example(parts, case)
    for rows in rows_list:
        started = time.perf_counter()
        milliseconds, _ = graph_ms(runner.run_captured, example, rows, ("sample",) if channels_last else ())
        record.add("seconds", f"{label} rows={rows} capture", time.perf_counter() - started)
        record.add("ms", f"{label} rows={rows}", milliseconds)
        record.add("mfu", f"{label} rows={rows}", flops[rows] / (milliseconds * 1e-3) / gpu_bench.PEAK_FLOPS)


UNET_VARIANTS = ("cudnn-benchmark", "compiled", "conv_1x1_as_mm", "freezing", "coordinate-descent",
                 "other-layout", "regional", "regional-resnets")
# Compiled in place, block by block (diffusers' compile_repeated_blocks): at most one, and last.
REGIONAL = {"regional": ["BasicTransformerBlock"], "regional-resnets": ["BasicTransformerBlock", "ResnetBlock2D"]}
INDUCTOR_SETTINGS = {"conv_1x1_as_mm": {"conv_1x1_as_mm": True}, "freezing": {"freezing": True},
                     "coordinate-descent": {"coordinate_descent_tuning": True}}


def measure_unet_variant(variant: str, unet: Any, parts: dict[str, Any], case: dict[str, Any], record: Recorder,
                         rows_list: list[int], channels_last: bool, flops: dict[int, float]) -> None:
    torch._dynamo.reset()
    label = f"unet {variant}"
    if variant == "cudnn-benchmark":
        torch.backends.cudnn.benchmark = True
        try:
            measure_unet(UNetRunner(unet, "cudnn"), parts, case, record, label, rows_list, channels_last, flops)
        finally:
            torch.backends.cudnn.benchmark = False
        return
    if variant in REGIONAL:
        unet._repeated_blocks = REGIONAL[variant]
        unet.compile_repeated_blocks()
        measure_unet(UNetRunner(unet, "cudnn"), parts, case, record, label, rows_list, channels_last, flops)
        return
    if variant == "other-layout":
        channels_last = not channels_last
        unet.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        label += f" channels_last={channels_last}"
    settings = INDUCTOR_SETTINGS.get(variant, {})
    previous = {name: getattr(torch._inductor.config, name) for name in settings}
    try:
        for name, value in settings.items():
            setattr(torch._inductor.config, name, value)
        compiled = UNetRunner(unet, "cudnn", compiled=torch.compile(plain_forward))
        measure_unet(compiled, parts, case, record, label, rows_list, channels_last, flops)
    finally:
        for name, value in previous.items():
            setattr(torch._inductor.config, name, value)
        if variant == "other-layout":
            unet.to(memory_format=torch.contiguous_format if channels_last else torch.channels_last)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="sd15")
    parser.add_argument("--rows", default="2")
    parser.add_argument("--unet", default="compiled",
                        help=f"comma-separated UNet variants, from {', '.join(UNET_VARIANTS)} (empty: the graph only)")
    parser.add_argument("--skip-vae", action="store_true", help="measure only the UNet")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    variants = [name for name in args.unet.split(",") if name]
    unknown = [name for name in variants if name not in UNET_VARIANTS]
    if unknown:
        parser.error(f"unknown --unet variants {unknown}; choose from {', '.join(UNET_VARIANTS)}")
    if any(name in REGIONAL for name in variants[:-1]):
        parser.error("a regional variant compiles the UNet's blocks in place: only one, and last")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    case = gpu_bench.CASES[args.case]
    rows_list = [int(value) for value in args.rows.split(",")]
    parts = gpu_bench.build_models(args.case)
    record = Recorder(args.out, {"case": args.case, "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__})
    flops = {rows: gpu_bench.unet_flops(parts, case, rows) for rows in rows_list}

    if not args.skip_vae:
        measure_vae(parts, case, record)

    unet = parts["unet"].requires_grad_(False)
    unet.fuse_qkv_projections()
    channels_last = LAYOUT[args.case]
    if channels_last:
        unet.to(memory_format=torch.channels_last)
    measure_unet(UNetRunner(unet, "cudnn"), parts, case, record, "unet graph", rows_list, channels_last, flops)
    for variant in variants:
        measure_unet_variant(variant, unet, parts, case, record, rows_list, channels_last, flops)
    return 0


if __name__ == "__main__":
    sys.exit(main())
