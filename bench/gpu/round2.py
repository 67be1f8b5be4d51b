#!/usr/bin/env python3
"""The compiled engine against stock diffusers + torch.compile, and the fast modes, in one run.

    python3 bench/gpu/round2.py --case sdxl --part stock --out DIR [--lock FILE --peers N]
    python3 bench/gpu/round2.py --case sdxl --part engine --out DIR [--lock FILE --peers N]
    python3 bench/gpu/round2.py --case sdxl --part engine --fp8 static [--jit] [--lean] --out DIR
    python3 bench/gpu/round2.py --case sdxl --part engine --lean [--jit] --out DIR
    python3 bench/gpu/round2.py --case sdxl --part lever --layout nchw [--fp8 static] --out DIR

One process per (case, part), on random-weight full-size models (`run.py`'s `build_models`):
- `stock`: diffusers' pipeline with `torch.compile` on its UNet (default mode), one image, then
  four (a second compile, as a user gets it); each image against plain stock's (PSNR).
- `engine`: sdserve's pipeline on the compiled engine with the feature-caching graphs
  (`EngineOptions(compile=True, feature_cache=True)`): exact mode at one and four images, each
  fast mode alone and together (speed and PSNR against the exact engine image), and the UNet call
  per graph (full with 1 and 2 rows, the outer blocks on kept features with 1 and 2 rows).
  With `--fp8 static` the engine is built with `engine_fp8: "static"` (`EngineOptions(fp8=...)`,
  the calibration pass included in its build time), written as `round2_<case>-engine-fp8.json`:
  the same UNet calls and exact mode, all fast modes together, and its exact image against the
  float16 engine's (PSNR), when an `--part engine` run of the same case left it in --scratch.
Several parts may build (compile, CPU-bound) side by side to fit one machine's time limit: with
`--lock` and `--peers`, each waits (up to `--wait-s`) until every peer has built, and measures
only while holding the lock, so no two measurements share the GPU or the host's CPU with a build.
Writes `round2_<case>_<part>.json` into --out after each measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import os
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "python"))

import run as base  # noqa: E402 - bench/gpu/run.py: models, stock runs, PSNR

STARTED = time.perf_counter()
# Stock + compile moves with the host's CPU (no CUDA graphs): more runs than the engine's.
REPEATS = 4
# name -> (guidance_start, guidance_end, cache_interval)
FAST_MODES: dict[str, tuple[float, float, int]] = {
    "guidance_interval_0_0.5": (0.0, 0.5, 1),
    "guidance_interval_0.2_0.8": (0.2, 0.8, 1),
    "cache_2": (0.0, 1.0, 2),
    "cache_3": (0.0, 1.0, 3),
    "cache_5": (0.0, 1.0, 5),
    "guidance_0_0.5+cache_3": (0.0, 0.5, 3),
    "guidance_0_0.5+cache_5": (0.0, 0.5, 5),
}


def log(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.1f} s] {message}", flush=True)


class Coordination:
    """Builds side by side, measurements one at a time (see the module docstring)."""

    def __init__(self, lock: Path | None, peers: int, wait_s: float, name: str) -> None:
        self.lock, self.peers, self.wait_s, self.name = lock, peers, wait_s, name

    def built(self) -> None:
        if self.lock is None:
            return
        (self.lock.parent / f"built-{self.name}").write_text("")
        deadline = time.perf_counter() + self.wait_s
        while len(list(self.lock.parent.glob("built-*"))) < self.peers and time.perf_counter() < deadline:
            time.sleep(1)
        log(f"{len(list(self.lock.parent.glob('built-*')))} of {self.peers} parts built")

    @contextlib.contextmanager
    def measuring(self) -> Iterator[None]:
        if self.lock is None:
            yield
            return
        with open(self.lock, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def run_settings(case: dict[str, Any], steps: int, batch: int, mode: tuple[float, float, int]) -> Any:
    from sdserve_backend.pipelines import GenerationSettings

    start, end, interval = mode
    return GenerationSettings(height=case["height"], width=case["width"], steps=steps, guidance_scale=case["guidance"],
                              guidance_start=start, guidance_end=end, cache_interval=interval)


def run_engine_pipeline(pipeline: Any, case: dict[str, Any], batch: int, steps: int,
                        mode: tuple[float, float, int]) -> base.Timed:
    from sdserve_backend.pipelines import GenerationRequest

    request = GenerationRequest(prompts=[base.PROMPT] * batch, seed=base.SEED)
    torch.cuda.synchronize()
    started = time.perf_counter()
    images = pipeline([request], run_settings(case, steps, batch, mode))[0]
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return base.Timed(seconds, seconds / steps * 1e3, images)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", choices=sorted(base.CASES), required=True)
    parser.add_argument("--part", choices=("stock", "engine", "lever"), required=True)
    parser.add_argument("--batch", type=int, default=1, help="stock: the batch size of this process")
    parser.add_argument("--layout", choices=("nchw", "nhwc"), default="nchw", help="lever: the UNet's memory format")
    parser.add_argument("--fp8", choices=("off", "static"), default="off", help="engine: the engine_fp8 mode")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--lock", type=Path)
    parser.add_argument("--peers", type=int, default=1)
    parser.add_argument("--wait-s", type=float, default=420)
    parser.add_argument("--engine-dir", type=Path, default=Path("/tmp/round2-engine"))
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/round2"), help="images shared by the parts")
    parser.add_argument("--lean", action="store_true",
                        help="engine: no feature-caching graphs and the VAE decoder uncompiled, outside graphs (a shorter "
                             "build); measures the UNet calls, exact mode and the profile, no fast mode")
    parser.add_argument("--jit", action="store_true",
                        help="engine: plain torch.compile instead of compiling ahead of time (FP8 runs only so: "
                             "the engine keeps it off, its UNet compiled ahead of time stalled)")
    parser.add_argument("--stock-wait-s", type=float, default=120,
                        help="engine: how long to wait for a stock part's image to compare with (0: no stock part runs)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.scratch.mkdir(parents=True, exist_ok=True)
    fp8_suffix = "-fp8" if args.part in ("engine", "lever") and args.fp8 != "off" else ""
    name = f"{args.case}-{args.part}" + {"stock": f"-{args.batch}", "lever": f"-{args.layout}{fp8_suffix}"}.get(args.part, fp8_suffix)
    coordination = Coordination(args.lock, args.peers, args.wait_s, name)
    case = base.CASES[args.case]
    steps = case["steps"]
    record: dict[str, Any] = {
        "case": args.case, "part": args.part, "settings": case, "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "results": {}, "unet_ms": {}, "errors": [], "fp8": args.fp8,
    }
    path = args.out / f"round2_{name}.json"

    def save() -> None:
        path.write_text(json.dumps(record, indent=2, default=str))

    def note(label: str, result: dict[str, Any], batch: int) -> None:
        result["images_per_s"] = batch / result["e2e_s"]
        record["results"][label] = result
        save()
        log(f"[{args.case}] {label}: {result['e2e_s']:.3f} s, {result['images_per_s']:.2f} img/s"
            + (f", PSNR {result['psnr_db']:.1f} dB" if "psnr_db" in result else ""))

    parts = base.build_models(args.case)
    record["unet_flops_rows2"] = base.unet_flops(parts, case, 2)
    log(f"[{args.case}] models built; 2-row UNet {record['unet_flops_rows2'] / 1e12:.2f} TFLOP")

    if args.part == "stock":
        # One batch size per process: a second size recompiles with the row count symbolic, and
        # the first size would then run that graph too.
        batch = args.batch
        pipe = base.stock_pipeline(parts)
        compiled = torch.compile(parts["unet"])
        started = time.perf_counter()
        object.__setattr__(pipe, "unet", compiled)
        base.run_stock(pipe, case, batch, base.WARMUP_STEPS)
        record["compile_s"] = time.perf_counter() - started
        save()
        coordination.built()
        with coordination.measuring():
            object.__setattr__(pipe, "unet", parts["unet"])
            _, reference = base.measure(lambda s: base.run_stock(pipe, case, batch, s or steps), 1)
            object.__setattr__(pipe, "unet", compiled)
            result, images = base.measure(lambda s: base.run_stock(pipe, case, batch, s or steps), REPEATS)
            result["psnr_db"] = base.psnr(images, reference)
        note(f"stock+compile batch{batch}", result, batch)
        np.save(args.scratch / f"stock_{args.case}_{batch}.npy", reference)
        return 0

    if args.part == "lever":
        # The profile's lever: the compiled 2-row UNet in the engine's graph, in one memory format.
        from sdserve_backend.engine.runners import UNetRunner, plain_forward
        from sdserve_backend.engine.static_call import BucketedCall

        unet = parts["unet"]
        unet.fuse_qkv_projections()
        if args.fp8 != "off":
            # As the engine converts it (engine/fp8.py), before compiling
            from sdserve_backend.engine import fp8

            started = time.perf_counter()
            calibration = fp8.calibration_inputs(base.sdserve_components(parts), unet, case["height"], case["width"])
            record["fp8_layers"] = fp8.quantize_unet_static(unet, calibration)
            record["fp8_s"] = time.perf_counter() - started
            del calibration
            log(f"[{args.case}] FP8: {record['fp8_layers']} layers converted in {record['fp8_s']:.1f} s")
        channels_last = args.layout == "nhwc"
        if channels_last:
            unet.to(memory_format=torch.channels_last)
        runner = UNetRunner(unet, "cudnn", compiled=torch.compile(plain_forward))
        raw = base.unet_inputs(parts, case, 2)
        example = {key: value for key, value in raw.items() if key != "added_cond_kwargs"}
        example.update(raw.get("added_cond_kwargs", {}))
        started = time.perf_counter()
        with torch.inference_mode():
            call = BucketedCall(runner.run_captured, example, (2,), True,
                                channels_last=("sample",) if channels_last else ())
            for key, buffer in call.buffers.items():
                buffer.copy_(example[key])
            call.capture()
        record["compile_s"] = time.perf_counter() - started
        coordination.built()
        with coordination.measuring():
            record["unet_ms"][f"compiled_graph_rows2_{args.layout}"] = base.unet_call_ms(lambda: call(example), 50)
            # The output on the example, for a same-run comparison of the parts (FP8 against float16)
            output = call(example)
            output = output[0] if isinstance(output, (tuple, list)) else output
            np.save(args.scratch / f"lever_{args.case}_{args.layout}{fp8_suffix}.npy", output.float().cpu().numpy())
            save()
            log(f"[{args.case}] {args.layout}{fp8_suffix}: {record['unet_ms']}")
            import profile_unet

            record["profile_rows2"] = profile_unet.profile(runner, example)
        save()
        log(f"[{args.case}] {args.layout}: {record['unet_ms']}")
        return 0

    from sdserve_backend.engine import EngineOptions, prepare_with_report
    from sdserve_backend.pipelines import TextToImagePipeline
    from sdserve_backend.pipelines.device import Placement

    components = base.sdserve_components(parts)
    started = time.perf_counter()
    prepared, report = prepare_with_report(
        components, Placement(torch.device("cuda"), torch.float16), engine_dir=args.engine_dir / f"{args.case}{fp8_suffix}",
        max_rows=8, height=case["height"], width=case["width"], force_rebuild=True,
        options=EngineOptions(compile=True, feature_cache=not args.lean, vae_graphs=not args.lean, fp8=args.fp8,
                              precompiled=not args.jit),
        log=lambda m: log(f"[{args.case}] {m}"))
    record["lean"], record["jit"] = args.lean, args.jit
    record["engine_build_s"] = time.perf_counter() - started
    record["engine_report"] = dataclasses.asdict(report)
    save()
    pipeline = TextToImagePipeline(prepared, prompt_cache_size=0)
    # Warm every path once (the feature-caching graphs, one row) before the timings.
    run_engine_pipeline(pipeline, case, 1, 4, (0.0, 1.0, 1) if args.lean else (0.0, 0.5, 2))
    coordination.built()
    with coordination.measuring():
        unet = prepared.unet
        for rows in (1, 2, 8):
            inputs = base.unet_inputs(parts, case, rows)
            added = inputs.get("added_cond_kwargs")
            record["unet_ms"][f"engine_rows{rows}"] = base.unet_call_ms(lambda: unet(**inputs, return_dict=False))
            if args.lean:
                continue
            _, features = unet.forward_keeping_features(inputs["sample"], inputs["timestep"],
                                                        inputs["encoder_hidden_states"], added)
            record["unet_ms"][f"engine_keep_rows{rows}"] = base.unet_call_ms(
                lambda: unet.forward_keeping_features(inputs["sample"], inputs["timestep"],
                                                      inputs["encoder_hidden_states"], added))
            record["unet_ms"][f"engine_reuse_rows{rows}"] = base.unet_call_ms(
                lambda: unet.forward_from_features(inputs["sample"], inputs["timestep"],
                                                   inputs["encoder_hidden_states"], features, added))
        save()
        log(f"[{args.case}] UNet ms: {record['unet_ms']}")
        exact: dict[int, np.ndarray] = {}
        for batch in (1, 4):
            result, exact[batch] = base.measure(
                lambda s, b=batch: run_engine_pipeline(pipeline, case, b, s or steps, (0.0, 1.0, 1)), case["repeats"])
            note(f"engine exact batch{batch}", result, batch)
        # Saved before the lock is released, so an FP8 part measuring next finds it.
        np.save(args.scratch / f"engine_{args.case}{fp8_suffix}.npy", exact[1])
        # With FP8: only every fast mode together (the fast-mode target), the rest is float16's.
        fast_modes = FAST_MODES if not fp8_suffix else {"guidance_0_0.5+cache_3": FAST_MODES["guidance_0_0.5+cache_3"]}
        if args.lean:
            fast_modes = {}
        float16_image = args.scratch / f"engine_{args.case}.npy"
        if fp8_suffix and float16_image.is_file():
            record["exact_psnr_vs_float16_engine_db"] = base.psnr(exact[1], np.load(float16_image))
            log(f"[{args.case}] FP8 exact image against the float16 engine's: {record['exact_psnr_vs_float16_engine_db']:.1f} dB")
        for name, mode in fast_modes.items():
            for batch in (1, 4) if name.startswith("guidance_0_0.5+cache") else (1,):
                result, images = base.measure(
                    lambda s, b=batch, m=mode: run_engine_pipeline(pipeline, case, b, s or steps, m), case["repeats"])
                result["psnr_db"] = base.psnr(images, exact[batch])
                result["speedup_vs_exact"] = record["results"][f"engine exact batch{batch}"]["e2e_s"] / result["e2e_s"]
                note(f"engine {name} batch{batch}", result, batch)
        # Where the compiled 2-row UNet's kernel time goes (profile_unet.py's groups).
        import profile_unet

        raw = base.unet_inputs(parts, case, 2)
        inputs = {key: value for key, value in raw.items() if key != "added_cond_kwargs"}
        inputs.update(raw.get("added_cond_kwargs", {}))
        if report.choices.get("channels_last"):
            # In the layout the engine compiled for: another layout is another signature, a compile of its own.
            inputs["sample"] = inputs["sample"].contiguous(memory_format=torch.channels_last)
        record["profile_rows2"] = profile_unet.profile(unet, inputs)
        record["profile_rows2"]["mfu_of_kernel_time"] = (
            record["unet_flops_rows2"] / (record["profile_rows2"]["gpu_ms_per_call"] * 1e-3) / base.PEAK_FLOPS)
        save()
    stock_image = args.scratch / f"stock_{args.case}_1.npy"
    deadline = time.perf_counter() + args.stock_wait_s
    while not stock_image.is_file() and time.perf_counter() < deadline:
        time.sleep(1)
    if stock_image.is_file():
        time.sleep(1)
        record["engine_exact_psnr_vs_stock_db"] = base.psnr(exact[1], np.load(stock_image))
    save()
    return 0


def main_marking_failure() -> int:
    """`main`, but a part that fails still counts as built, so that its peers do not wait for it."""
    try:
        return main()
    except BaseException:
        arguments = sys.argv
        lock = arguments[arguments.index("--lock") + 1] if "--lock" in arguments else None
        if lock is not None:
            (Path(lock).parent / f"built-failed-{os.getpid()}").write_text("failed")
        raise


if __name__ == "__main__":
    sys.exit(main_marking_failure())
