#!/usr/bin/env python3
"""The engine with and without torch.compile, in one process, on one GPU.

    python bench/gpu/compile_engine.py --case sd15 --engine-dir DIR --out FILE.json [--max-batch 1]

Builds the CUDA-graph engine (the default) and the compiled one (`engine_compile`) over the same
random-weight model, and reports for each: build seconds per stage, the UNet call per row bucket,
and the end-to-end latency of one image at the case's size and steps, plus the PSNR between their
images. The compiled engine keeps its Inductor cache in --engine-dir/inductor: run this twice with
the same folder and the second run's build time is a warm start.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as gpu_bench  # noqa: E402

from sdserve_backend.engine.prepare import EngineOptions, prepare_with_report  # noqa: E402
from sdserve_backend.pipelines.device import Placement  # noqa: E402


def measure_engine(components: Any, case: dict[str, Any], engine_dir: Path, max_rows: int,
                   options: EngineOptions) -> tuple[dict[str, Any], Any]:
    started = time.perf_counter()
    prepared, report = prepare_with_report(
        components, Placement(torch.device("cuda"), torch.float16), engine_dir=engine_dir, max_rows=max_rows,
        height=case["height"], width=case["width"], options=options, log=gpu_bench.log)
    result: dict[str, Any] = {"build_s": time.perf_counter() - started, "stages_s": report.seconds,
                              "status": report.status, "choices": report.choices}
    call = prepared.unet.calls[(case["height"] // 8, case["width"] // 8)]
    result["unet_ms_by_rows"] = {}
    for rows in call.buckets:
        inputs = {name: buffer[:rows] for name, buffer in call.buffers.items()}
        result["unet_ms_by_rows"][rows] = gpu_bench.unet_call_ms(lambda: call(inputs), repeats=10)
    runs = [gpu_bench.run_sdserve(prepared, case, 1, case["steps"]) for _ in range(3)]
    result["e2e_s"] = statistics.median(run.seconds for run in runs)
    result["per_step_ms"] = statistics.median(run.per_step_ms for run in runs)
    gpu_bench.log(f"{'compiled' if options.compile else 'graphs'}: {json.dumps(result, default=str)}")
    return result, runs[-1].images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="sd15")
    parser.add_argument("--engine-dir", type=Path, required=True)
    parser.add_argument("--max-batch", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    case = gpu_bench.CASES[args.case]
    parts = gpu_bench.build_models(args.case)
    components = gpu_bench.sdserve_components(parts)
    results: dict[str, Any] = {"case": args.case, "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                               "max_rows": 2 * args.max_batch}
    baseline_dir = args.engine_dir.with_name(args.engine_dir.name + "-graphs")
    results["graphs"], baseline = measure_engine(components, case, baseline_dir, 2 * args.max_batch, EngineOptions())
    results["compiled"], compiled = measure_engine(
        dataclasses.replace(components), case, args.engine_dir, 2 * args.max_batch, EngineOptions(compile=True))
    results["psnr_db"] = gpu_bench.psnr(baseline, compiled)
    results["speedup_e2e"] = results["graphs"]["e2e_s"] / results["compiled"]["e2e_s"]
    gpu_bench.log(f"PSNR compiled vs graphs {results['psnr_db']:.1f} dB, e2e speed-up {results['speedup_e2e']:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
