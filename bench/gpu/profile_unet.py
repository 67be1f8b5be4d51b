#!/usr/bin/env python3
"""Where a UNet call's GPU time goes: kernels grouped by kind, per row count.

    python bench/gpu/profile_unet.py --case sd15 --rows 2,32 [--compile] --out FILE.json

The UNet as the engine runs it (float16, fused QKV, its layout and attention choice; with
--compile, torch.compile with the row count symbolic), warmed up, then three calls under
torch.profiler. Kernels are grouped as convolution, matmul, attention, normalisation, fused
(Inductor's Triton kernels) and other; each group's milliseconds per call and share of the GPU
time are printed with the top kernels, and the call's FLOPs give its MFU.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as gpu_bench  # noqa: E402

from sdserve_backend.engine.runners import UNetRunner, plain_forward  # noqa: E402

CALLS = 3
GROUPS = (
    ("attention", re.compile(r"flash|fmha|attention|sdpa|mha", re.I)),
    ("convolution", re.compile(r"conv|fprop|dgrad|implicit|winograd|nchw|nhwc.*kernel", re.I)),
    ("matmul", re.compile(r"gemm|matmul|cutlass|cublas|xmma|sm90", re.I)),
    ("normalisation", re.compile(r"norm|welford", re.I)),
    ("fused (Triton)", re.compile(r"^triton_", re.I)),
)
LAYOUT = {"sd15": True, "sdxl": False}  # the engine's measured channels_last choice on the H100


def group_of(name: str) -> str:
    for group, pattern in GROUPS:
        if pattern.search(name):
            return group
    return "other (elementwise, copies)"


def profile(runner: UNetRunner, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    with torch.inference_mode():
        for _ in range(3):
            runner.run_captured(**inputs)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profiler:
            for _ in range(CALLS):
                runner.run_captured(**inputs)
            torch.cuda.synchronize()
    kernels: dict[str, float] = defaultdict(float)
    for event in profiler.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels[event.name] += event.time_range.elapsed_us() / 1e3 / CALLS  # ms per call
    groups: dict[str, float] = defaultdict(float)
    for name, ms in kernels.items():
        groups[group_of(name)] += ms
    total = sum(groups.values())
    top = sorted(kernels.items(), key=lambda item: -item[1])[:12]
    return {"gpu_ms_per_call": total, "groups_ms": dict(sorted(groups.items(), key=lambda item: -item[1])),
            "top_kernels_ms": [(name[:120], ms) for name, ms in top]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="sd15")
    parser.add_argument("--rows", default="2")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--layout", choices=["engine", "nchw", "nhwc"], default="engine",
                        help="the UNet's memory format: the engine's choice for the case, or forced")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    case = gpu_bench.CASES[args.case]
    parts = gpu_bench.build_models(args.case)
    unet = parts["unet"].requires_grad_(False)
    unet.fuse_qkv_projections()
    channels_last = LAYOUT[args.case] if args.layout == "engine" else args.layout == "nhwc"
    if channels_last:
        unet.to(memory_format=torch.channels_last)
    compiled = torch.compile(plain_forward) if args.compile else None
    runner = UNetRunner(unet, "cudnn", compiled=compiled)
    result: dict[str, Any] = {"case": args.case, "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                              "compiled": args.compile, "channels_last": channels_last, "rows": {}}
    for rows in (int(value) for value in args.rows.split(",")):
        raw = gpu_bench.unet_inputs(parts, case, rows)
        inputs = {key: value for key, value in raw.items() if key != "added_cond_kwargs"}
        inputs.update(raw.get("added_cond_kwargs", {}))
        if channels_last:
            inputs["sample"] = inputs["sample"].contiguous(memory_format=torch.channels_last)
        record = profile(runner, inputs)
        flops = gpu_bench.unet_flops(parts, case, rows)
        record["tflop"] = flops / 1e12
        record["mfu_of_kernel_time"] = flops / (record["gpu_ms_per_call"] * 1e-3) / gpu_bench.PEAK_FLOPS
        result["rows"][rows] = record
        gpu_bench.log(f"{args.case} rows={rows} compiled={args.compile} channels_last={channels_last}: {record['gpu_ms_per_call']:.2f} ms of kernels, "
                      f"MFU {record['mfu_of_kernel_time']:.0%}")
        for group, ms in record["groups_ms"].items():
            gpu_bench.log(f"  {group:28s} {ms:7.2f} ms  {ms / record['gpu_ms_per_call']:5.1%}")
        for name, ms in record["top_kernels_ms"][:8]:
            gpu_bench.log(f"    {ms:6.2f} ms  {name}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
