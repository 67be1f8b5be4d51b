"""Measures how often the model draws what held-out captions say, per scheduler and step count.

    python -m training.evaluate --model model_repository/shapes_sd/1 [--count 100] [--out eval.json]

The captions come from the scene sampler's held-out tenth, with every colour and the background
named. The checker's own accuracy is measured first on the exact renders of the same scenes and
on their VAE round trips, so that its errors are not blamed on the model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from .checker import Score, score
from .model import IMAGE_SIZE
from .render import render_scenes
from .scenes import EVALUATION_OPTIONS, Scene, SceneSampler

EVALUATION_SEED = 20261127
# The server's short names (python/sdserve_backend/pipelines/schedulers.py) and their classes.
SCHEDULERS: dict[str, str] = {
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "heun": "HeunDiscreteScheduler",
}


def held_out_scenes(count: int) -> list[Scene]:
    return SceneSampler(EVALUATION_SEED, EVALUATION_OPTIONS, held_out=True).sample_many(count)


def _score_one(item: tuple[np.ndarray, Scene]) -> Score:
    return score(*item)


def score_images(images: list[np.ndarray], scenes: list[Scene], pool: ProcessPoolExecutor | None) -> dict[str, float]:
    total = Score()
    results = pool.map(_score_one, zip(images, scenes), chunksize=8) if pool else map(_score_one, zip(images, scenes))
    for result in results:
        total.add(result)
    return total.rates()


def to_uint8(batch: np.ndarray | torch.Tensor) -> list[np.ndarray]:
    array = batch.detach().float().cpu().permute(0, 2, 3, 1).numpy() if isinstance(batch, torch.Tensor) else batch
    return [(np.clip(image, 0, 1) * 255).round().astype(np.uint8) for image in array]


def generate(
    pipeline: StableDiffusionPipeline,
    scenes: list[Scene],
    steps: int,
    guidance_scale: float,
    batch_size: int,
) -> list[np.ndarray]:
    images: list[np.ndarray] = []
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start : start + batch_size]
        generators = [torch.Generator("cpu").manual_seed(start + index) for index in range(len(chunk))]
        result = pipeline([scene.caption for scene in chunk], num_inference_steps=steps,
                          guidance_scale=guidance_scale, generator=generators, output_type="np")
        images += to_uint8(result.images)
    return images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Score shapes_sd on held-out captions.")
    parser.add_argument("--model", type=Path, required=True, help="diffusers folder")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--schedulers", default=",".join(["default", *SCHEDULERS]))
    parser.add_argument("--steps", default="4,10,20,25")
    parser.add_argument("--guidance-scales", default="1,3,7.5", help="swept with the default scheduler")
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--default-steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--workers", type=int, default=0, help="processes that score images")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("float16", "float32"), help="default: float16 on CUDA, else float32")
    parser.add_argument("--out", type=Path, help="JSON file for the results")
    args = parser.parse_args(argv)

    scenes = held_out_scenes(args.count)
    pool = ProcessPoolExecutor(args.workers) if args.workers > 0 else None
    dtype = getattr(torch, args.dtype or ("float16" if args.device.startswith("cuda") else "float32"))
    pipeline = StableDiffusionPipeline.from_pretrained(args.model, dtype=dtype).to(args.device)
    pipeline.set_progress_bar_config(disable=True)
    default_scheduler = pipeline.scheduler

    # 1. The checker on exact renders and on VAE round trips of the same scenes.
    renders = render_scenes(scenes, IMAGE_SIZE, args.device)
    with torch.no_grad():
        vae = pipeline.vae
        latents = vae.encode((renders * 2 - 1).to(dtype)).latent_dist.mode()
        round_trip = (vae.decode(latents).sample.float() / 2 + 0.5).clamp(0, 1)
    results: dict[str, object] = {
        "count": len(scenes),
        "checker_on_renders": score_images(to_uint8(renders), scenes, pool),
        "checker_on_vae_round_trip": score_images(to_uint8(round_trip), scenes, pool),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
    }
    print(json.dumps(results, indent=2), flush=True)

    # 2. Every scheduler at every step count, at the default guidance.
    table: list[dict[str, object]] = []
    for name in args.schedulers.split(","):
        for steps in (int(value) for value in args.steps.split(",")):
            if name == "default":
                pipeline.scheduler = default_scheduler
            else:
                scheduler_class = getattr(__import__("diffusers"), SCHEDULERS[name])
                try:
                    pipeline.scheduler = scheduler_class.from_config(default_scheduler.config)
                except ImportError as error:  # lms needs scipy
                    print(f"{name}: skipped ({error})".replace("\n", " "), flush=True)
                    break
            started = time.monotonic()
            images = generate(pipeline, scenes, steps, args.guidance_scale, args.batch_size)
            rates = score_images(images, scenes, pool)
            table.append({"scheduler": name, "steps": steps, **rates, "seconds": time.monotonic() - started})
            print(f"{name:8s} {steps:3d} steps  colour {rates['colour']:.3f}  shape {rates['shape']:.3f}  "
                  f"position {rates['position']:.3f}", flush=True)
    results["table"] = table

    # 3. Guidance sweep with the default scheduler and steps.
    pipeline.scheduler = default_scheduler
    sweep = []
    for guidance_scale in (float(value) for value in args.guidance_scales.split(",")):
        images = generate(pipeline, scenes, args.default_steps, guidance_scale, args.batch_size)
        sweep.append({"guidance_scale": guidance_scale, **score_images(images, scenes, pool)})
        print(f"guidance {guidance_scale}: {sweep[-1]}", flush=True)
    results["guidance"] = sweep
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    if pool:
        pool.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
