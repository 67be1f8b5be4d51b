#!/usr/bin/env python3
"""Where step-level batching spends its time, without the server: the engine-backed pipeline of a
full-size random-weight model, driven in-process.

    python3 bench/load/step_probe.py --case sd15 --out DIR

1. the UNet graph call per row bucket (the GPU's ceiling in images/s at each batch size);
2. `denoise_batch` over k requests in a loop: host time to queue a step against GPU time per step;
3. the StepBatcher with closed-loop client threads: images/s and the batch sizes it ran;
4. a torch.profiler table of a few batched steps.
Writes probe.json and profile.txt into --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "bench" / "gpu"))

import run as gpu_bench  # noqa: E402  (bench/gpu/run.py)

from sdserve_backend.engine.prepare import prepare_with_report  # noqa: E402
from sdserve_backend.pipelines import GenerationRequest, TextToImagePipeline  # noqa: E402
from sdserve_backend.pipelines import step_batcher as step_batcher_module  # noqa: E402
from sdserve_backend.pipelines.device import Placement  # noqa: E402
from sdserve_backend.pipelines.requests import GenerationSettings  # noqa: E402


def log(message: str) -> None:
    print(message, flush=True)


def states_for(pipeline: TextToImagePipeline, settings: GenerationSettings, count: int) -> list[Any]:
    states = []
    for index in range(count):
        request = GenerationRequest(prompts=[gpu_bench.PROMPT], seed=index)
        states.append(pipeline.task.prepare(request, settings))
    return states


def time_denoise(pipeline: TextToImagePipeline, settings: GenerationSettings, count: int, steps: int) -> dict[str, float]:
    states = states_for(pipeline, settings, count)
    with torch.inference_mode():
        pipeline.denoise_batch(states)
        torch.cuda.synchronize()
        host: list[float] = []
        start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        wall = time.perf_counter()
        start_event.record()
        for _ in range(steps):
            began = time.perf_counter()
            pipeline.denoise_batch(states)
            host.append((time.perf_counter() - began) * 1e3)
        end_event.record()
        end_event.synchronize()
        wall_ms = (time.perf_counter() - wall) * 1e3 / steps
    return {"requests": count, "host_ms_per_step": statistics.median(host),
            "gpu_ms_per_step": start_event.elapsed_time(end_event) / steps, "wall_ms_per_step": wall_ms}


def run_batcher(pipeline: TextToImagePipeline, settings: GenerationSettings, clients: int, per_client: int,
                max_images: int) -> dict[str, Any]:
    batcher = step_batcher_module.StepBatcher(pipeline, max_images=max_images)
    latencies: list[float] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        for number in range(per_client):
            done = threading.Event()
            began = time.perf_counter()
            batcher.submit(GenerationRequest(prompts=[gpu_bench.PROMPT], seed=index * 100 + number), settings,
                           on_done=lambda outcome: done.set())
            done.wait()
            with lock:
                latencies.append(time.perf_counter() - began)

    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    trace = batcher.trace()
    batcher.close()
    sizes = [len(record.members) for record in trace]
    return {"clients": clients, "images": clients * per_client, "images_per_s": clients * per_client / seconds,
            "p50_s": statistics.median(latencies), "max_s": max(latencies),
            "mean_batch_last_256_calls": statistics.mean(sizes) if sizes else 0.0,
            "steps_ahead": step_batcher_module.STEPS_AHEAD}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="sd15")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    case = gpu_bench.CASES[args.case]
    parts = gpu_bench.build_models(args.case)
    components, report = prepare_with_report(
        gpu_bench.sdserve_components(parts), Placement(torch.device("cuda"), torch.float16),
        max_rows=2 * args.max_batch, height=case["height"], width=case["width"], log=log)
    log(f"engine: {report.choices} in {report.seconds.get('total', 0):.1f} s")
    pipeline = TextToImagePipeline(components)
    settings = GenerationSettings(height=case["height"], width=case["width"], steps=case["steps"],
                                  guidance_scale=case["guidance"])
    result: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "case": args.case, "choices": report.choices}

    # 1. The UNet alone, per bucket
    call = components.unet.calls[(case["height"] // 8, case["width"] // 8)]
    unet_ms = {}
    for rows in call.buckets:
        inputs = {name: buffer[:rows] for name, buffer in call.buffers.items()}
        unet_ms[rows] = gpu_bench.unet_call_ms(lambda: call(inputs), repeats=10)
        log(f"unet rows={rows}: {unet_ms[rows]:.2f} ms -> ceiling "
            f"{rows / 2 / (unet_ms[rows] * 1e-3 * (case['steps'] + 1)):.2f} images/s")
    result["unet_ms_by_rows"] = unet_ms

    # 2. denoise_batch over k requests
    result["denoise"] = []
    for count in (1, 4, 8, 16):
        if count > args.max_batch:
            break
        timing = time_denoise(pipeline, settings, count, 10)
        log(f"denoise_batch: {timing}")
        result["denoise"].append(timing)

    # 3. The StepBatcher under closed-loop clients, with several lookahead bounds
    result["batcher"] = []
    for steps_ahead in (2, 8):
        step_batcher_module.STEPS_AHEAD = steps_ahead
        for clients in (4, args.max_batch):
            outcome = run_batcher(pipeline, settings, clients, 2, args.max_batch)
            log(f"step batcher: {outcome}")
            result["batcher"].append(outcome)

    # 4. A profile of batched steps
    states = states_for(pipeline, settings, args.max_batch)
    with torch.inference_mode():
        pipeline.denoise_batch(states)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as profiler:
            for _ in range(3):
                pipeline.denoise_batch(states)
            torch.cuda.synchronize()
    table = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=40)
    (args.out / "profile.txt").write_text(table)
    log(table[:6000])
    (args.out / "probe.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
