#!/usr/bin/env python3
"""Probe: what torch.compile would add to the engine, and what it costs at start-up.

    TORCHINDUCTOR_CACHE_DIR=DIR python bench/gpu/compile_probe.py --case sd15 --out FILE.json

One UNet (random weights, float16, fused QKV, the engine's layout and attention choice), 2 rows.
Times the eager call, the CUDA-graph call, the compile, and the compiled call inside a CUDA graph.
Run it twice with the same cache folder: the second run's compile time is the warm start that an
engine would pay with Inductor's on-disk caches kept in the engine folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import CASES, build_models, unet_call_ms, unet_inputs  # noqa: E402

from sdserve_backend.engine.runners import UNetRunner  # noqa: E402
from sdserve_backend.engine.static_call import BucketedCall  # noqa: E402


def graphed(function, example: dict[str, torch.Tensor]) -> BucketedCall:
    with torch.inference_mode():
        call = BucketedCall(function, example, (2,), use_graphs=True, channels_last=("sample",))
        for name, buffer in call.buffers.items():
            buffer.copy_(example[name])
        call.capture()
    return call


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", default="sd15")
    parser.add_argument("--attention", default="cudnn")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    case = CASES[args.case]
    parts = build_models(args.case)
    unet = parts["unet"].requires_grad_(False)
    unet.fuse_qkv_projections()
    unet.to(memory_format=torch.channels_last)
    raw = unet_inputs(parts, case, 2)
    example = {k: v for k, v in raw.items() if k != "added_cond_kwargs"}
    example.update(raw.get("added_cond_kwargs", {}))
    result: dict[str, float | str] = {"case": args.case, "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}

    runner = UNetRunner(unet, args.attention)
    eager = graphed(runner.run_eager, example)
    result["graph_ms"] = unet_call_ms(lambda: eager(example))
    print(result, flush=True)

    compiled_unet = torch.compile(unet, dynamic=False)
    compiled = UNetRunner(compiled_unet, args.attention)
    # Compiled on the static buffers themselves, so the capture below meets the same guards.
    with torch.inference_mode():
        call = BucketedCall(compiled.run_eager, example, (2,), use_graphs=True, channels_last=("sample",))
        for name, buffer in call.buffers.items():
            buffer.copy_(example[name])
    views = {name: buffer[:2] for name, buffer in call.buffers.items()}
    started = time.perf_counter()
    with torch.inference_mode():
        compiled.run_eager(**views)
    torch.cuda.synchronize()
    result["compile_s"] = time.perf_counter() - started
    print(result, flush=True)
    result["compiled_ms"] = unet_call_ms(lambda: compiled.run_eager(**views))
    started = time.perf_counter()
    call.capture()
    result["compiled_capture_s"] = time.perf_counter() - started
    result["compiled_graph_ms"] = unet_call_ms(lambda: call(example))
    with torch.inference_mode():
        reference = eager(example).float()
        mine = call(example).float()
    result["relative_error"] = float((mine - reference).norm() / reference.norm())
    print(result, flush=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
