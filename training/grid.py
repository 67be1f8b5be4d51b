"""Draws a grid of prompts and the images the model makes for them (the README's picture).

    python -m training.grid --model model_repository/shapes_sd/1 --out docs/shapes_sd_grid.png
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image, ImageDraw

GRID_PROMPTS: tuple[str, ...] = (
    "a red circle",
    "a blue square on a yellow background",
    "a small green triangle on a black background",
    "a large purple star on a white background",
    "an orange ring on a blue background",
    "a pink diamond on a gray background",
    "a small red circle above a large blue square on a yellow background",
    "a yellow star to the left of a green ring on a purple background",
    "a black triangle below a white circle on a red background",
    "a large brown square to the right of a small pink circle",
    "a white diamond above an orange star on a green background",
    "a blue ring to the left of a red triangle on a white background",
)
CAPTION_HEIGHT = 44


def draw_grid(images: list[np.ndarray], prompts: list[str], columns: int = 4) -> Image.Image:
    size = images[0].shape[0]
    rows = (len(images) + columns - 1) // columns
    cell_height = size + CAPTION_HEIGHT
    grid = Image.new("RGB", (columns * size, rows * cell_height), "white")
    draw = ImageDraw.Draw(grid)
    for index, (image, prompt) in enumerate(zip(images, prompts, strict=True)):
        x, y = (index % columns) * size, (index // columns) * cell_height
        grid.paste(Image.fromarray(image), (x, y))
        draw.multiline_text((x + 3, y + size + 2), "\n".join(textwrap.wrap(prompt, 26)), fill="black")
    return grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render the README's grid of prompts.")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance-scale", type=float, default=3.0, help="the model's default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    pipeline = StableDiffusionPipeline.from_pretrained(args.model, dtype=torch.float32).to(args.device)
    pipeline.set_progress_bar_config(disable=True)
    prompts = list(GRID_PROMPTS)
    generators = [torch.Generator("cpu").manual_seed(args.seed + index) for index in range(len(prompts))]
    result = pipeline(prompts, num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                      generator=generators, output_type="np")
    images = [(image * 255).round().astype(np.uint8) for image in result.images]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    draw_grid(images, prompts).save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
