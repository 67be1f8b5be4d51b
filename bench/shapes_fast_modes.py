"""What the fast modes cost in prompt accuracy on the trained model `shapes_sd`.

    PYTHONPATH=python python -m bench.shapes_fast_modes [--device cpu|cuda] [--count 100] [--out results/x]

Generates the held-out captions of `training.evaluate` (same scenes, seed = the caption's index)
with sdserve's own pipeline at the model's defaults (20 steps, its Euler scheduler, guidance 3),
once exactly and once per fast mode (`--modes` picks some), and scores each mode with `training.checker`: colour, shape
and position accuracy, their difference to exact mode in points, the PSNR of each mode's images
against exact mode's, and the generation time. Writes `<out>.json` and `<out>.md`. With `--images`
several processes can generate modes side by side (`--generate-only`), and a last run scores them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sdserve_backend.pipelines import GenerationRequest, GenerationSettings, TextToImagePipeline, load_components
from training.evaluate import held_out_scenes, score_images
from training.scenes import Scene

MODEL = Path(__file__).resolve().parent.parent / "model_repository" / "shapes_sd" / "1"
# The model's defaults (model_repository/shapes_sd/config.pbtxt): 128², 20 steps, its own scheduler.
DEFAULTS = GenerationSettings(128, 128, 20, 3.0)
MODES: dict[str, GenerationSettings] = {
    "exact": DEFAULTS,
    "guidance [0, 0.5)": dataclasses.replace(DEFAULTS, guidance_end=0.5),
    "cache_interval 2": dataclasses.replace(DEFAULTS, cache_interval=2),
    "cache_interval 3": dataclasses.replace(DEFAULTS, cache_interval=3),
    "guidance [0, 0.5) + cache 3": dataclasses.replace(DEFAULTS, guidance_end=0.5, cache_interval=3),
}
# Modes that change the model rather than the settings: run at the defaults on their own pipeline.
MODEL_MODES = ("fp8 static",)
METRICS = ("colour", "shape", "position")


def psnr(first: np.ndarray, second: np.ndarray) -> float:
    error = np.mean((first.astype(np.float64) - second.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255.0**2 / error))


def fp8_pipeline(model: Path, device: torch.device, dtype: torch.dtype) -> TextToImagePipeline:
    """A pipeline of its own (the model loaded again) whose UNet has the engine's FP8 conversion."""
    from sdserve_backend.engine.fp8 import calibration_inputs, quantize_unet_static

    components = load_components(model, device, dtype)
    unet = components.unet
    unet.fuse_qkv_projections()
    height, width = DEFAULTS.height, DEFAULTS.width
    converted = quantize_unet_static(unet, calibration_inputs(components, unet, height, width))
    print(f"fp8 static: {converted} Linear layers converted", flush=True)
    return TextToImagePipeline(components)


def generate(
    pipeline: TextToImagePipeline, scenes: list[Scene], settings: GenerationSettings, batch_size: int
) -> tuple[np.ndarray, float]:
    """One request per caption, seeded with its index as `training.evaluate` seeds it, and the
    seconds the generation took (the scoring not included)."""
    images: list[np.ndarray] = []
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    for start in range(0, len(scenes), batch_size):
        requests = [GenerationRequest([scene.caption], seed=start + index)
                    for index, scene in enumerate(scenes[start : start + batch_size])]
        images += [image[0] for image in pipeline(requests, settings)]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return np.stack(images), time.perf_counter() - started


def markdown(results: dict[str, object]) -> str:
    lines = [
        f"shapes_sd, {results['count']} held-out captions, {results['device']}, {results['dtype']}, "
        "20 Euler steps, guidance 3 (points: difference to exact mode)",
        "",
        "| mode | colour % | shape % | position % | Δ colour / shape / position (points) | PSNR vs exact dB | s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in results["modes"]:  # type: ignore[attr-defined]
        psnr_cell = "–" if row["psnr_db"] is None else f"{row['psnr_db']:.1f}"
        delta = " / ".join(f"{row['delta_points'][name]:+.1f}" for name in METRICS)
        lines.append(f"| {row['mode']} | " + " | ".join(f"{100 * row[name]:.1f}" for name in METRICS)
                     + f" | {delta} | {psnr_cell} | {row['seconds']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prompt accuracy of shapes_sd per fast mode.")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("float16", "float32"), help="default: float16 on CUDA, else float32")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--out", type=Path, help="writes OUT.json and OUT.md")
    parser.add_argument("--modes", default=",".join([*MODES, *MODEL_MODES]),
                        help="comma-separated modes (exact always runs first); default: all")
    parser.add_argument("--images", type=Path,
                        help="a folder that keeps each mode's images (<mode>.npy) and seconds; modes found there "
                             "are taken from it instead of generated, so processes can split the modes between them")
    parser.add_argument("--generate-only", action="store_true",
                        help="with --images: generate the chosen modes that are not there yet (exact too only if "
                             "listed), save them, score nothing")
    args = parser.parse_args(argv)

    dtype = getattr(torch, args.dtype or ("float16" if args.device == "cuda" else "float32"))
    pipeline = TextToImagePipeline(load_components(args.model, torch.device(args.device), dtype))
    # Commas inside a guidance interval ("guidance [0, 0.5)") belong to the mode's name.
    listed = [mode.strip() for mode in re.split(r",(?![^\[]*\))", args.modes) if mode.strip()]
    chosen = ["exact", *[mode for mode in listed if mode != "exact"]]
    if args.generate_only:
        if args.images is None:
            parser.error("--generate-only needs --images")
        chosen = listed
    unknown = [mode for mode in chosen if mode not in MODES and mode not in MODEL_MODES]
    if unknown:
        parser.error(f"unknown modes {unknown}; known: {', '.join([*MODES, *MODEL_MODES])}")
    scenes = held_out_scenes(args.count)
    generate(pipeline, scenes[:1], DEFAULTS, 1)  # warm-up: kernels, allocator

    results: dict[str, object] = {
        "count": len(scenes),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "settings": dataclasses.asdict(DEFAULTS),
    }
    rows: list[dict[str, object]] = []
    exact: np.ndarray | None = None
    for mode in chosen:
        settings = MODES.get(mode, DEFAULTS)
        kept = None if args.images is None else args.images / (mode.replace(" ", "_").replace("/", "-") + ".npy")
        if kept is not None and kept.is_file():
            images, seconds = np.load(kept), float(json.loads(kept.with_suffix(".json").read_text())["seconds"])
        else:
            runner = fp8_pipeline(args.model, torch.device(args.device), dtype) if mode == "fp8 static" else pipeline
            images, seconds = generate(runner, scenes, settings, args.batch_size)
            if kept is not None:
                kept.parent.mkdir(parents=True, exist_ok=True)
                np.save(kept, images)
                kept.with_suffix(".json").write_text(json.dumps({"seconds": seconds, "count": len(scenes)}) + "\n")
        if args.generate_only:
            print(f"{mode}: generated in {seconds:.1f} s, kept in {kept}", flush=True)
            continue
        exact = images if exact is None else exact
        rates = score_images(list(images), scenes, None)
        base = rows[0] if rows else rates
        rows.append({
            "mode": mode, "guidance_start": settings.guidance_start, "guidance_end": settings.guidance_end,
            "cache_interval": settings.cache_interval, **rates,
            "delta_points": {name: 100 * (rates[name] - float(base[name])) for name in METRICS},  # type: ignore[arg-type]
            "psnr_db": None if images is exact else psnr(images, exact), "seconds": seconds,
        })
        print(f"{mode:28s} " + "  ".join(f"{name} {rates[name]:.3f}" for name in METRICS)
              + f"  psnr {rows[-1]['psnr_db']}  {seconds:.1f} s", flush=True)
    if args.generate_only:
        return 0
    results["modes"] = rows
    table = markdown(results)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
