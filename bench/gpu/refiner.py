#!/usr/bin/env python3
"""GPU rows of SD 2.1 and the SDXL base -> refiner handoff: sdserve against diffusers, one process.

    PYTHONPATH=python python3 bench/gpu/refiner.py --out DIR [--cases sd21,sdxl_refined] [--tiny]

Full-size architectures (configs in bench/gpu/configs/: sd21, sdxl, sdxl_refiner, written from the
published model configs) with RANDOM weights built on the GPU from a fixed seed, float16:
  sd21          768x768, v-prediction DDIM: diffusers' StableDiffusionPipeline against sdserve's
                text-to-image, and StableDiffusionImg2ImgPipeline against its image-to-image
                (strength 0.75)
  sdxl_refined  1024x1024: StableDiffusionXLPipeline(denoising_end=0.8, output_type="latent") then
                StableDiffusionXLImg2ImgPipeline(denoising_start=0.8) on the refiner (sharing the
                base's second text encoder and VAE, as the published weights are the same), one
                generator for both, against sdserve's base model with the refiner
Each row: end-to-end seconds of both (after one warm-up), and PSNR of sdserve's image against
diffusers'. --tiny runs the same on the tiny variants on the CPU in float32 (a check that the
script runs; its images are equal to diffusers' there). Writes results.json and results.md into
--out; exits 1 when a PSNR is under PSNR_FLOOR_DB.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))
CONFIGS = Path(__file__).resolve().parent / "configs"

PSNR_FLOOR_DB = 30.0
PROMPT = "a photo of a cat and a dog"
SEED = 1234
WEIGHTS_SEED = 0
HIGH_NOISE_FRACTION = 0.8
STRENGTH = 0.75
CASES: dict[str, dict[str, Any]] = {
    "sd21": {"size": 768, "steps": 30, "guidance": 7.5},
    "sdxl_refined": {"size": 1024, "steps": 30, "guidance": 5.0},
}
TINY = {"size": 64, "steps": 6}


def log(message: str) -> None:
    print(message, flush=True)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def as_uint8(images: Any) -> np.ndarray:
    return (np.asarray(images) * 255).round().astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Components: full-size random weights on the GPU, or the tiny models on the CPU


def full_size_parts(name: str, device: torch.device) -> dict[str, Any]:
    """Modules built from bench/gpu/configs/`name` on `device` in float16 (an SDXL VAE kept in
    float32 for sdserve, as it keeps one, with a float16 copy for diffusers)."""
    from diffusers import AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from sdserve_backend.tiny_model import BOS_TOKEN, EOS_TOKEN, SD2_PAD_TOKEN, TOKENIZER_MERGES, build_tokenizer_vocab

    folder = CONFIGS / name
    vocab = build_tokenizer_vocab()
    pad = SD2_PAD_TOKEN if name == "sd21" else EOS_TOKEN

    def config(part: str) -> dict[str, Any]:
        return json.loads((folder / f"{part}.json").read_text())

    def made(offset: int, factory: Callable[[], Any]) -> Any:
        torch.manual_seed(WEIGHTS_SEED + offset)
        with device:
            return factory().eval()

    special = {"bos_token_id": vocab[BOS_TOKEN], "eos_token_id": vocab[EOS_TOKEN], "pad_token_id": vocab[pad]}
    parts: dict[str, Any] = {"unet": made(0, lambda: UNet2DConditionModel.from_config(config("unet"))).half()}
    vae = made(1, lambda: AutoencoderKL.from_config(config("vae")))
    if (folder / "text_encoder.json").is_file():
        parts["text_encoder"] = made(2, lambda: CLIPTextModel(CLIPTextConfig(**config("text_encoder"), **special))).half()
    if (folder / "text_encoder_2.json").is_file():
        parts["text_encoder_2"] = made(
            3, lambda: CLIPTextModelWithProjection(CLIPTextConfig(**config("text_encoder_2"), **special))).half()
    upcast = "text_encoder_2" in parts and bool(vae.config.force_upcast)
    parts["vae"] = vae if upcast else vae.half()
    parts["vae_stock"] = vae.half() if not upcast else _half_copy(vae)
    parts["tokenizer"] = CLIPTokenizer(vocab=vocab, merges=list(TOKENIZER_MERGES), model_max_length=77, pad_token=pad)
    scheduler = config("scheduler")
    scheduler_class = {"DDIMScheduler": DDIMScheduler, "EulerDiscreteScheduler": EulerDiscreteScheduler}[scheduler["_class_name"]]
    parts["scheduler_class"] = scheduler_class
    parts["scheduler_config"] = dict(scheduler_class.from_config(scheduler).config)
    return parts


def _half_copy(module: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(module).half()


def tiny_parts(variant: str, root: Path) -> dict[str, Any]:
    """The tiny variant's modules on the CPU in float32."""
    from sdserve_backend.pipelines import load_components
    from sdserve_backend.tiny_model import make_tiny_model

    loaded = load_components(make_tiny_model(root / variant, variant), torch.device("cpu"), torch.float32)
    return {"unet": loaded.unet, "vae": loaded.vae, "vae_stock": loaded.vae, "tokenizer": loaded.tokenizer_2 or loaded.tokenizer,
            "text_encoder": loaded.text_encoder, "text_encoder_2": loaded.text_encoder_2,
            "scheduler_class": loaded.scheduler_class, "scheduler_config": loaded.scheduler_config}


def sdserve_components(parts: dict[str, Any], device: torch.device, dtype: torch.dtype, refiner: bool = False) -> Any:
    from sdserve_backend.pipelines.components import DiffusionComponents

    has_first = parts.get("text_encoder") is not None and not refiner
    is_sdxl = parts.get("text_encoder_2") is not None
    return DiffusionComponents(
        unet=parts["unet"], vae=parts["vae"], tokenizer=parts["tokenizer"] if has_first else None,
        text_encoder=parts["text_encoder"] if has_first else None,
        tokenizer_2=parts["tokenizer"] if is_sdxl else None, text_encoder_2=parts.get("text_encoder_2"),
        scheduler_class=parts["scheduler_class"], scheduler_config=parts["scheduler_config"],
        force_zeros_for_empty_prompt=is_sdxl and not refiner, device=device, dtype=dtype,
        requires_aesthetics_score=refiner,
    )


def timed(run: Callable[[], np.ndarray], device: torch.device) -> tuple[float, np.ndarray]:
    """Seconds of the second of two runs (the first warms up), and its images."""
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    images = run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, images


# ---------------------------------------------------------------------------------------------
# Cases


def run_sd21(case: dict[str, Any], parts: dict[str, Any], device: torch.device, dtype: torch.dtype) -> list[dict[str, Any]]:
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    from sdserve_backend.pipelines import GenerationRequest, GenerationSettings, TextToImagePipeline

    size, steps, guidance = case["size"], case["steps"], case["guidance"]
    shared = {"vae": parts["vae_stock"], "text_encoder": parts["text_encoder"], "tokenizer": parts["tokenizer"],
              "unet": parts["unet"], "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    ours = TextToImagePipeline(sdserve_components(parts, device, dtype))
    settings = GenerationSettings(size, size, steps, guidance)
    rows = []

    stock = StableDiffusionPipeline(scheduler=parts["scheduler_class"].from_config(parts["scheduler_config"]), **shared)
    stock.set_progress_bar_config(disable=True)
    stock_s, expected = timed(lambda: as_uint8(stock(PROMPT, height=size, width=size, num_inference_steps=steps,
                                                     guidance_scale=guidance, output_type="np",
                                                     generator=torch.Generator("cpu").manual_seed(SEED)).images), device)
    ours_s, images = timed(lambda: ours([GenerationRequest([PROMPT], SEED)], settings)[0], device)
    rows.append({"row": "sd21 text-to-image", "diffusers_s": stock_s, "sdserve_s": ours_s, "psnr_db": psnr(images, expected)})

    from PIL import Image

    init = Image.fromarray(expected[0])
    img2img = StableDiffusionImg2ImgPipeline(scheduler=parts["scheduler_class"].from_config(parts["scheduler_config"]),
                                             **shared)
    img2img.set_progress_bar_config(disable=True)
    stock_s, expected = timed(lambda: as_uint8(img2img(PROMPT, image=init, strength=STRENGTH, num_inference_steps=steps,
                                                       guidance_scale=guidance, output_type="np",
                                                       generator=torch.Generator("cpu").manual_seed(SEED)).images), device)
    request = GenerationRequest([PROMPT], SEED, images=(init,), strength=STRENGTH)
    ours_s, images = timed(lambda: ours([request], settings)[0], device)
    rows.append({"row": "sd21 image-to-image", "diffusers_s": stock_s, "sdserve_s": ours_s, "psnr_db": psnr(images, expected)})
    return rows


def run_sdxl_refined(case: dict[str, Any], base: dict[str, Any], refiner: dict[str, Any], device: torch.device,
                     dtype: torch.dtype) -> list[dict[str, Any]]:
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    from sdserve_backend.pipelines import GenerationRequest, GenerationSettings, TextToImagePipeline

    size, steps, guidance = case["size"], case["steps"], case["guidance"]
    stock_base = StableDiffusionXLPipeline(
        vae=base["vae_stock"], text_encoder=base["text_encoder"], text_encoder_2=base["text_encoder_2"],
        tokenizer=base["tokenizer"], tokenizer_2=base["tokenizer"], unet=base["unet"],
        scheduler=base["scheduler_class"].from_config(base["scheduler_config"]), add_watermarker=False)
    stock_refiner = StableDiffusionXLImg2ImgPipeline(
        vae=refiner["vae_stock"], text_encoder=None, text_encoder_2=refiner["text_encoder_2"], tokenizer=None,
        tokenizer_2=refiner["tokenizer"], unet=refiner["unet"],
        scheduler=refiner["scheduler_class"].from_config(refiner["scheduler_config"]), requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False, add_watermarker=False)
    for pipe in (stock_base, stock_refiner):
        pipe.set_progress_bar_config(disable=True)

    def ensemble() -> np.ndarray:
        generator = torch.Generator("cpu").manual_seed(SEED)
        latents = stock_base(PROMPT, height=size, width=size, num_inference_steps=steps, guidance_scale=guidance,
                             denoising_end=HIGH_NOISE_FRACTION, output_type="latent", generator=generator).images
        return as_uint8(stock_refiner(PROMPT, image=latents, num_inference_steps=steps, guidance_scale=guidance,
                                      denoising_start=HIGH_NOISE_FRACTION, output_type="np", generator=generator).images)

    ours = TextToImagePipeline(sdserve_components(base, device, dtype),
                               refiner=sdserve_components(refiner, device, dtype, refiner=True))
    request = GenerationRequest([PROMPT], SEED, high_noise_fraction=HIGH_NOISE_FRACTION)
    settings = GenerationSettings(size, size, steps, guidance)
    stock_s, expected = timed(ensemble, device)
    ours_s, images = timed(lambda: ours([request], settings)[0], device)
    return [{"row": f"sdxl base -> refiner at {HIGH_NOISE_FRACTION}", "diffusers_s": stock_s, "sdserve_s": ours_s,
             "psnr_db": psnr(images, expected)}]


# ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--tiny", action="store_true", help="the tiny variants on the CPU in float32 (a quick check)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu") if args.tiny else torch.device("cuda")
    dtype = torch.float32 if args.tiny else torch.float16
    results: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
        "device": "cpu (tiny models)" if args.tiny else torch.cuda.get_device_name(), "rows": [],
    }
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.cases.split(","):
            case = {**CASES[name], **(TINY if args.tiny else {})}
            log(f"{name}: {case}")
            if name == "sd21":
                parts = tiny_parts("sd21", Path(scratch)) if args.tiny else full_size_parts("sd21", device)
                rows = run_sd21(case, parts, device, dtype)
            else:
                if args.tiny:
                    base, refiner = tiny_parts("sdxl", Path(scratch)), tiny_parts("sdxl_refiner", Path(scratch))
                else:
                    base = full_size_parts("sdxl", device)
                    refiner = full_size_parts("sdxl_refiner", device)
                    # The published refiner's second text encoder and VAE are the base's.
                    refiner.update({key: base[key] for key in ("text_encoder_2", "vae", "vae_stock")})
                rows = run_sdxl_refined(case, base, refiner, device, dtype)
            for row in rows:
                log(f"  {row['row']}: diffusers {row['diffusers_s']:.2f} s, sdserve {row['sdserve_s']:.2f} s, "
                    f"PSNR {row['psnr_db']:.1f} dB")
            results["rows"] += rows
            (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
            if device.type == "cuda":
                torch.cuda.empty_cache()
    lines = [f"# SD 2.1 and SDXL refiner rows ({results['device']}, {results['date']}, torch {results['torch']})", "",
             "| row | diffusers s | sdserve s | PSNR vs diffusers dB |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['row']} | {r['diffusers_s']:.2f} | {r['sdserve_s']:.2f} | {r['psnr_db']:.1f} |" for r in results["rows"]]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    return 0 if all(row["psnr_db"] >= PSNR_FLOOR_DB for row in results["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
