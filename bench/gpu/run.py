#!/usr/bin/env python3
"""GPU benchmark: stock diffusers against sdserve's pipeline with its engine, on one GPU, one run.

    python bench/gpu/run.py --out DIR [--cases sd15,sdxl] [--batches 1,4] [--variants ...] [--with-compile]

Full-size SD 1.5 and SDXL architectures (configs in bench/gpu/configs/) with RANDOM weights built
on the GPU from a fixed seed, so no weights are downloaded; the images are noise, but every kernel
is the size a real checkpoint runs. Variants, all float16 on the same GPU in the same process:
  stock        diffusers' StableDiffusion(XL)Pipeline, eager
  stock+graph  the same pipeline with its UNet run through CUDA graphs only (what users do by hand)
  sdserve      sdserve's TextToImagePipeline, eager (batch 1 only: the pipeline's own overhead)
  engine       sdserve's TextToImagePipeline on `engine.prepare` components
  img2img      diffusers' StableDiffusion(XL)Img2ImgPipeline against sdserve's image-to-image task
               (strength 0.75, batch 1, eager), PSNR of sdserve's image against diffusers'
  inpaint      diffusers' StableDiffusion(XL)InpaintPipeline against sdserve's inpainting task
               (4-channel UNet: masked latent blending; strength 1.0, mask_blur 4, batch 1, eager);
               diffusers' image pasted onto the input with its `apply_overlay`, as sdserve does
With --with-compile it also runs `stock+compile` (torch.compile on the stock pipeline's UNet, at
--compile-batches: each new batch size costs stock a recompile) and `engine+compile` (the engine
with `engine_compile`); --variants picks a subset (stock always runs: it is the baseline).
Writes results.json (after every measurement), results.md, plot.png and a side-by-side image strip
per case into --out; exits 1 when an engine image is under PSNR_FLOOR_DB against stock's.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "python"))
CONFIGS = Path(__file__).resolve().parent / "configs"

# H100 SXM dense float16 tensor-core peak.
PEAK_FLOPS = 989.4e12
PSNR_FLOOR_DB = 30.0
PROMPT = "a photo of a cat and a dog"
SEED = 1234
WEIGHTS_SEED = 0
CASES: dict[str, dict[str, Any]] = {
    "sd15": {"height": 512, "width": 512, "steps": 50, "guidance": 7.5, "repeats": 3},
    "sdxl": {"height": 1024, "width": 1024, "steps": 30, "guidance": 5.0, "repeats": 2},
}
WARMUP_STEPS = 3
VARIANTS = ("stock+graph", "sdserve", "engine", "img2img", "inpaint")
IMAGE_TASKS = ("img2img", "inpaint")
TASK_STRENGTH = {"img2img": 0.75, "inpaint": 1.0}
MASK_BLUR = 4
COMPILE_VARIANTS = ("stock+compile", "engine+compile")


def log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------------------------
# Models


def build_models(case: str) -> dict[str, Any]:
    """Random-weight full-size components on CUDA in float16 (the SDXL VAE also in float32)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from sdserve_backend.tiny_model import BOS_TOKEN, EOS_TOKEN, TOKENIZER_MERGES, build_tokenizer_vocab

    folder = CONFIGS / case
    vocab = build_tokenizer_vocab()
    special = {"bos_token_id": vocab[BOS_TOKEN], "eos_token_id": vocab[EOS_TOKEN], "pad_token_id": vocab[EOS_TOKEN]}

    def config(name: str) -> dict[str, Any]:
        return json.loads((folder / f"{name}.json").read_text())

    def made(seed_offset: int, factory: Callable[[], Any]) -> Any:
        torch.manual_seed(WEIGHTS_SEED + seed_offset)
        with torch.device("cuda"):
            return factory().eval()

    parts: dict[str, Any] = {}
    parts["unet"] = made(0, lambda: UNet2DConditionModel.from_config(config("unet"))).half()
    vae = made(1, lambda: AutoencoderKL.from_config(config("vae")))
    parts["text_encoder"] = made(2, lambda: CLIPTextModel(CLIPTextConfig(**config("text_encoder"), **special))).half()
    parts["text_encoder_2"] = None
    if (folder / "text_encoder_2.json").is_file():
        parts["text_encoder_2"] = made(
            3, lambda: CLIPTextModelWithProjection(CLIPTextConfig(**config("text_encoder_2"), **special))
        ).half()
    is_sdxl = parts["text_encoder_2"] is not None
    # sdserve keeps an upcast VAE in float32; stock diffusers holds it in float16 and upcasts per call.
    parts["vae_sdserve"] = vae if is_sdxl and vae.config.force_upcast else vae.half()
    parts["vae_stock"] = copy.deepcopy(vae).half() if is_sdxl else parts["vae_sdserve"]
    parts["tokenizer"] = CLIPTokenizer(vocab=vocab, merges=list(TOKENIZER_MERGES), model_max_length=77)
    scheduler_config = config("scheduler")
    scheduler_class = {"PNDMScheduler": PNDMScheduler, "EulerDiscreteScheduler": EulerDiscreteScheduler}[
        scheduler_config["_class_name"]
    ]
    parts["scheduler_class"] = scheduler_class
    parts["scheduler_config"] = dict(scheduler_class.from_config(scheduler_config).config)
    parts["is_sdxl"] = is_sdxl
    return parts


def stock_pipeline(parts: dict[str, Any]) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    scheduler = parts["scheduler_class"].from_config(parts["scheduler_config"])
    if parts["is_sdxl"]:
        pipe = StableDiffusionXLPipeline(
            vae=parts["vae_stock"], text_encoder=parts["text_encoder"], text_encoder_2=parts["text_encoder_2"],
            tokenizer=parts["tokenizer"], tokenizer_2=parts["tokenizer"], unet=parts["unet"], scheduler=scheduler,
            force_zeros_for_empty_prompt=True, add_watermarker=False,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=parts["vae_stock"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
            unet=parts["unet"], scheduler=scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sdserve_components(parts: dict[str, Any]) -> Any:
    from sdserve_backend.pipelines.components import DiffusionComponents

    return DiffusionComponents(
        unet=parts["unet"], vae=parts["vae_sdserve"], tokenizer=parts["tokenizer"], text_encoder=parts["text_encoder"],
        tokenizer_2=parts["tokenizer"] if parts["is_sdxl"] else None, text_encoder_2=parts["text_encoder_2"],
        scheduler_class=parts["scheduler_class"], scheduler_config=parts["scheduler_config"],
        force_zeros_for_empty_prompt=parts["is_sdxl"], device=torch.device("cuda"), dtype=torch.float16,
    )


# ---------------------------------------------------------------------------------------------
# Runs


class CountingUNet:
    """Counts UNet calls so per-step time divides by the evaluations actually made."""

    def __init__(self, unet: Any) -> None:
        self.__dict__["_unet"] = unet
        self.__dict__["calls"] = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_unet"], name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.__dict__["calls"] += 1
        return self._unet(*args, **kwargs)


@dataclasses.dataclass
class Timed:
    seconds: float
    per_step_ms: float
    images: np.ndarray


def run_stock(pipe: Any, case: dict[str, Any], batch: int, steps: int, **task_inputs: Any) -> Timed:
    marks: list[tuple[int, float]] = []

    def on_step_end(p: Any, index: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if index == 0 or index == p.num_timesteps - 1:
            torch.cuda.synchronize()
            marks.append((index, time.perf_counter()))
        return kwargs

    generator = torch.Generator("cpu").manual_seed(SEED)
    torch.cuda.synchronize()
    start = time.perf_counter()
    output = pipe(
        prompt=[PROMPT] * batch, height=case["height"], width=case["width"], num_inference_steps=steps,
        guidance_scale=case["guidance"], generator=generator, output_type="np", callback_on_step_end=on_step_end,
        **task_inputs,
    )
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    images = (np.asarray(output.images) * 255).round().astype(np.uint8)
    per_step = (marks[-1][1] - marks[0][1]) / max(1, marks[-1][0] - marks[0][0]) * 1e3 if len(marks) > 1 else float("nan")
    return Timed(seconds, per_step, images)


def run_sdserve(components: Any, case: dict[str, Any], batch: int, steps: int, **request_fields: Any) -> Timed:
    from sdserve_backend.pipelines import GenerationRequest, TextToImagePipeline
    from sdserve_backend.pipelines.text_to_image import GenerationSettings

    counting = CountingUNet(components.unet)
    # No prompt cache: stock diffusers encodes the prompt on every call, and so does this.
    pipeline = TextToImagePipeline(dataclasses.replace(components, unet=counting), prompt_cache_size=0)
    marks: list[tuple[int, float]] = []

    def on_step(step: int, total: int) -> None:
        if not marks or step == total:
            torch.cuda.synchronize()
            marks.append((counting.calls, time.perf_counter()))

    request = GenerationRequest(prompts=[PROMPT] * batch, seed=SEED, **request_fields)
    settings = GenerationSettings(height=case["height"], width=case["width"], steps=steps, guidance_scale=case["guidance"])
    torch.cuda.synchronize()
    start = time.perf_counter()
    images = pipeline([request], settings, on_step=on_step)[0]
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    per_step = (marks[-1][1] - marks[0][1]) / max(1, marks[-1][0] - marks[0][0]) * 1e3 if len(marks) > 1 else float("nan")
    return Timed(seconds, per_step, images)


def task_images(case: dict[str, Any]) -> tuple[Any, Any]:
    """A smooth random picture at the case's size and a mask (white: repaint) over a band of it."""
    from PIL import Image, ImageDraw

    size = (case["width"], case["height"])
    small = (np.random.default_rng(SEED).random((size[1] // 64, size[0] // 64, 3)) * 255).astype(np.uint8)
    picture = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle((size[0] // 4, size[1] // 4, size[0] * 3 // 4, size[1] // 2), fill=255)
    return picture, mask


def stock_task_pipeline(pipe: Any, task: str, is_sdxl: bool) -> Any:
    from diffusers import (
        StableDiffusionImg2ImgPipeline,
        StableDiffusionInpaintPipeline,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLInpaintPipeline,
    )

    classes = {("img2img", False): StableDiffusionImg2ImgPipeline, ("img2img", True): StableDiffusionXLImg2ImgPipeline,
               ("inpaint", False): StableDiffusionInpaintPipeline, ("inpaint", True): StableDiffusionXLInpaintPipeline}
    # from_pipe casts the shared modules to float32 unless told the dtype: keep the stock pipeline's
    task_pipe = classes[(task, is_sdxl)].from_pipe(pipe, dtype=pipe.unet.dtype)
    task_pipe.set_progress_bar_config(disable=True)
    return task_pipe


def measure(run: Callable[[int], Timed], repeats: int) -> tuple[dict[str, Any], np.ndarray]:
    """Warm up with a short run, then `repeats` full runs: medians, peak memory, last images."""
    run(WARMUP_STEPS)
    torch.cuda.reset_peak_memory_stats()
    runs = [run(0) for _ in range(repeats)]
    seconds = statistics.median(r.seconds for r in runs)
    return {
        "e2e_s": seconds,
        "per_step_ms": statistics.median(r.per_step_ms for r in runs),
        "e2e_all_s": [r.seconds for r in runs],
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
    }, runs[-1].images


def unet_call_ms(call: Callable[[], Any], repeats: int = 20) -> float:
    with torch.inference_mode():
        for _ in range(3):
            call()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            call()
        end.record()
        end.synchronize()
    return start.elapsed_time(end) / repeats


def unet_inputs(parts: dict[str, Any], case: dict[str, Any], rows: int) -> dict[str, Any]:
    unet = parts["unet"]
    generator = torch.Generator("cuda").manual_seed(7)
    shape = (rows, 4, case["height"] // 8, case["width"] // 8)
    inputs: dict[str, Any] = {
        "sample": torch.randn(shape, generator=generator, device="cuda", dtype=torch.float16),
        "timestep": torch.full((rows,), 801.0, device="cuda"),
        "encoder_hidden_states": torch.randn(
            (rows, 77, unet.config.cross_attention_dim), generator=generator, device="cuda", dtype=torch.float16
        ),
    }
    if parts["is_sdxl"]:
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.randn((rows, 1280), generator=generator, device="cuda", dtype=torch.float16),
            "time_ids": torch.tensor([[case["height"], case["width"], 0, 0, case["height"], case["width"]]],
                                     device="cuda", dtype=torch.float16).repeat(rows, 1),
        }
    return inputs


def unet_flops(parts: dict[str, Any], case: dict[str, Any], rows: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    inputs = unet_inputs(parts, case, rows)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        parts["unet"](**inputs, return_dict=False)
    return float(counter.get_total_flops())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


# ---------------------------------------------------------------------------------------------
# One case


def run_case(name: str, batches: list[int], out: Path, results: dict[str, Any], variants_to_run: set[str],
             compile_batches: list[int], engine_root: Path) -> None:
    from sdserve_backend.engine import EngineOptions, prepare_with_report
    from sdserve_backend.engine.runners import UNetRunner
    from sdserve_backend.engine.static_call import BucketedCall
    from sdserve_backend.pipelines.device import Placement

    case = CASES[name]
    record: dict[str, Any] = {"settings": case, "variants": {}, "errors": []}
    results["cases"][name] = record
    variants = record["variants"]
    images: dict[str, np.ndarray] = {}

    def attempt(label: str, function: Callable[[], None]) -> None:
        try:
            function()
        except Exception as error:  # a failed variant is recorded, the others still run
            log(f"[{name}] {label} FAILED: {error!r}")
            record["errors"].append(f"{label}: {error!r}\n{traceback.format_exc()}")
            torch.cuda.empty_cache()

    # 1. Models, FLOPs of one UNet call per row count
    started = time.perf_counter()
    parts = build_models(name)
    record["model_build_s"] = time.perf_counter() - started
    record["unet_params"] = sum(p.numel() for p in parts["unet"].parameters())
    rows_list = sorted({2 * b for b in batches} | {2})
    record["unet_flops"] = {str(rows): unet_flops(parts, case, rows) for rows in rows_list}
    log(f"[{name}] models built in {record['model_build_s']:.1f} s; UNet {record['unet_params'] / 1e9:.2f} B params; "
        f"flops {record['unet_flops']}")
    pipe = stock_pipeline(parts)
    steps = case["steps"]

    def note(variant: str, batch: int, result: dict[str, Any]) -> None:
        flops = record["unet_flops"].get(str(2 * batch))
        result["images_per_s"] = batch / result["e2e_s"]
        if flops:
            result["unet_mfu_at_step"] = flops / (result["per_step_ms"] / 1e3) / PEAK_FLOPS
        variants.setdefault(variant, {})[f"batch{batch}"] = result
        save_json(results, out)
        log(f"[{name}] {variant:12s} batch {batch}: e2e {result['e2e_s']:.3f} s, step {result['per_step_ms']:.2f} ms, "
            f"{result['images_per_s']:.2f} img/s, peak {result['peak_mem_gib']:.1f} GiB")

    # 2. Stock diffusers, eager; the UNet call alone too
    for batch in batches:
        def stock(batch: int = batch) -> None:
            result, images[f"stock{batch}"] = measure(lambda s: run_stock(pipe, case, batch, s or steps), case["repeats"])
            note("stock", batch, result)
        attempt(f"stock batch {batch}", stock)
    inputs = unet_inputs(parts, case, 2)
    record["unet_ms"] = {"stock_eager_rows2": unet_call_ms(lambda: parts["unet"](**inputs, return_dict=False))}

    def measure_stock_variant(variant: str, image_key: str, variant_batches: list[int] = batches) -> None:
        """The stock pipeline with its UNet swapped, at each batch, against plain stock's images."""
        for batch in variant_batches:
            result, images[f"{image_key}{batch}"] = measure(
                lambda s, batch=batch: run_stock(pipe, case, batch, s or steps), case["repeats"])
            result["psnr_vs_stock_db"] = psnr(images[f"{image_key}{batch}"], images[f"stock{batch}"])
            note(variant, batch, result)

    # 3. Stock diffusers with its UNet through CUDA graphs (no fusion, default attention)
    def stock_graph() -> None:
        max_rows = 2 * max(batches)
        runner = UNetRunner(parts["unet"], "default")
        example = {k: v[:1] for k, v in unet_inputs(parts, case, 1).items() if k != "added_cond_kwargs"}
        if parts["is_sdxl"]:
            added = unet_inputs(parts, case, 1)["added_cond_kwargs"]
            example.update(text_embeds=added["text_embeds"], time_ids=added["time_ids"])
        rows = tuple(sorted({2 * b for b in batches}))
        with torch.inference_mode():
            call = BucketedCall(runner.run_eager, example, rows, use_graphs=True)
            for buffer_name, buffer in call.buffers.items():
                buffer.copy_(example[buffer_name].expand_as(buffer))
            started = time.perf_counter()
            call.capture()
        record["stock_graph_capture_s"] = time.perf_counter() - started
        runner.calls[(case["height"] // 8, case["width"] // 8)] = call
        object.__setattr__(pipe, "unet", runner)
        try:
            g_inputs = unet_inputs(parts, case, 2)
            record["unet_ms"]["graph_only_rows2"] = unet_call_ms(lambda: runner(**g_inputs, return_dict=False))
            measure_stock_variant("stock+graph", "stockgraph")
        finally:
            object.__setattr__(pipe, "unet", parts["unet"])
            del runner, call
            torch.cuda.empty_cache()
    if "stock+graph" in variants_to_run:
        attempt("stock+graph", stock_graph)

    # 3b. Stock diffusers with torch.compile on its UNet (the usual user recipe), when asked
    def stock_compile() -> None:
        compiled = torch.compile(parts["unet"])
        object.__setattr__(pipe, "unet", compiled)
        try:
            started = time.perf_counter()
            run_stock(pipe, case, compile_batches[0], WARMUP_STEPS)
            record["stock_compile_s"] = time.perf_counter() - started
            measure_stock_variant("stock+compile", "stockcompile", compile_batches)
        finally:
            object.__setattr__(pipe, "unet", parts["unet"])
            del compiled
            torch._dynamo.reset()
            torch.cuda.empty_cache()
    if "stock+compile" in variants_to_run:
        attempt("stock+compile", stock_compile)

    # 4. sdserve's pipeline, eager, batch 1
    components = sdserve_components(parts)

    def sdserve_eager() -> None:
        result, images["sdserve1"] = measure(lambda s: run_sdserve(components, case, 1, s or steps), 1)
        result["psnr_vs_stock_db"] = psnr(images["sdserve1"], images["stock1"])
        note("sdserve", 1, result)
    if "sdserve" in variants_to_run:
        attempt("sdserve eager", sdserve_eager)

    # 5. Image-to-image and inpainting: diffusers' own pipelines against sdserve's tasks, batch 1
    def image_task(task: str) -> None:
        from diffusers.image_processor import VaeImageProcessor

        picture, mask = task_images(case)
        stock_inputs: dict[str, Any] = {"image": picture, "strength": TASK_STRENGTH[task]}
        fields: dict[str, Any] = {"images": (picture,), "strength": TASK_STRENGTH[task]}
        if task == "inpaint":
            stock_inputs["mask_image"] = VaeImageProcessor.blur(mask, MASK_BLUR)
            fields.update(masks=(mask,), mask_blur=MASK_BLUR)
        stock_task = stock_task_pipeline(pipe, task, parts["is_sdxl"])
        result, stock_images = measure(lambda s: run_stock(stock_task, case, 1, s or steps, **stock_inputs), case["repeats"])
        if task == "inpaint":
            from PIL import Image

            overlay = stock_task.image_processor.apply_overlay
            stock_images = np.stack([np.asarray(overlay(stock_inputs["mask_image"], picture, Image.fromarray(image)))
                                     for image in stock_images])
        images[f"stock_{task}1"] = stock_images
        note(f"stock {task}", 1, result)
        result, images[f"{task}1"] = measure(lambda s: run_sdserve(components, case, 1, s or steps, **fields), 1)
        result["psnr_vs_stock_db"] = psnr(images[f"{task}1"], images[f"stock_{task}1"])
        note(task, 1, result)
    for task in IMAGE_TASKS:
        if task in variants_to_run:
            attempt(task, lambda task=task: image_task(task))

    def measure_prepared(prepared: Any, variant: str, image_key: str, unet_key: str) -> None:
        """sdserve's pipeline on engine components: the 2-row UNet call, then each batch against stock."""
        rows2 = unet_inputs(parts, case, 2)
        record["unet_ms"][unet_key] = unet_call_ms(lambda: prepared.unet(**rows2, return_dict=False))
        for batch in batches:
            result, images[f"{image_key}{batch}"] = measure(
                lambda s, batch=batch: run_sdserve(prepared, case, batch, s or steps), case["repeats"])
            result["psnr_vs_stock_db"] = psnr(images[f"{image_key}{batch}"], images[f"stock{batch}"])
            note(variant, batch, result)

    # 5. sdserve's pipeline on the engine: a cold build, then a warm start from engine.json
    def engine() -> None:
        # The stock runs are done: the engine fuses the shared UNet's projections in place.
        placement = Placement(torch.device("cuda"), torch.float16)
        engine_dir = engine_root / f"engine-{name}"
        arguments = dict(engine_dir=engine_dir, max_rows=2 * max(batches), height=case["height"], width=case["width"],
                         log=lambda m: log(f"[{name}] {m}"))
        started = time.perf_counter()
        built, cold = prepare_with_report(components, placement, **arguments)
        record["engine_build_s"] = time.perf_counter() - started
        record["engine_cold"] = dataclasses.asdict(cold)
        # Drop the cold engine's graphs before the warm start captures its own.
        del built
        torch.cuda.empty_cache()
        started = time.perf_counter()
        prepared, warm = prepare_with_report(components, placement, **arguments)
        record["engine_warm_start_s"] = time.perf_counter() - started
        record["engine_warm"] = dataclasses.asdict(warm)
        record["engine_json"] = json.loads((engine_dir / "engine.json").read_text())
        log(f"[{name}] engine build {record['engine_build_s']:.1f} s (choices {cold.choices}), "
            f"warm start {record['engine_warm_start_s']:.1f} s ({warm.status})")
        measure_prepared(prepared, "engine", "engine", "engine_rows2")
    if "engine" in variants_to_run:
        attempt("engine", engine)

    # 6. sdserve's pipeline on the engine with torch.compile (`engine_compile`), when asked
    def engine_compiled() -> None:
        placement = Placement(torch.device("cuda"), torch.float16)
        started = time.perf_counter()
        prepared, report = prepare_with_report(
            components, placement, engine_dir=engine_root / f"engine-compiled-{name}",
            max_rows=2 * max(batches), height=case["height"], width=case["width"], options=EngineOptions(compile=True),
            log=lambda m: log(f"[{name}] {m}"))
        record["engine_compiled_build_s"] = time.perf_counter() - started
        record["engine_compiled"] = dataclasses.asdict(report)
        measure_prepared(prepared, "engine+compile", "enginecompiled", "engine_compiled_rows2")
    if "engine+compile" in variants_to_run:
        attempt("engine+compile", engine_compiled)

    for key, milliseconds in record["unet_ms"].items():
        rows = "2"
        record.setdefault("unet_mfu", {})[key] = record["unet_flops"][rows] / (milliseconds / 1e3) / PEAK_FLOPS
    record["image_std"] = {key: float(value.std()) for key, value in images.items()}
    save_strip(images, out / f"images_{name}.png")
    del parts, pipe, components
    torch.cuda.empty_cache()


def save_json(results: dict[str, Any], out: Path) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2, default=repr) + "\n")


def save_strip(images: dict[str, np.ndarray], path: Path) -> None:
    from PIL import Image

    keys = ("stock1", "stockgraph1", "stockcompile1", "sdserve1", "engine1", "enginecompiled1")
    tiles = [Image.fromarray(images[key][0]).resize((256, 256)) for key in keys if key in images]
    if not tiles:
        return
    strip = Image.new("RGB", (256 * len(tiles), 256))
    for index, tile in enumerate(tiles):
        strip.paste(tile, (256 * index, 0))
    strip.save(path)


# ---------------------------------------------------------------------------------------------
# Reports


def write_markdown(results: dict[str, Any], path: Path) -> None:
    lines = [
        "# sdserve GPU benchmark",
        "",
        f"GPU: {results['gpu']}; date {results['date']}; torch {results['torch']} (CUDA {results['cuda']}); "
        f"diffusers {results['diffusers']}. Random-weight full-size models, float16.",
        "",
        "| case | variant | batch | end-to-end s | per step ms | images/s | UNet MFU at step | peak GiB | PSNR vs stock dB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, record in results["cases"].items():
        for variant, by_batch in record["variants"].items():
            for batch, r in by_batch.items():
                lines.append(
                    f"| {name} | {variant} | {batch.removeprefix('batch')} | {r['e2e_s']:.3f} | {r['per_step_ms']:.2f} | "
                    f"{r['images_per_s']:.2f} | {100 * r.get('unet_mfu_at_step', float('nan')):.1f}% | "
                    f"{r['peak_mem_gib']:.1f} | {r.get('psnr_vs_stock_db', float('nan')):.1f} |"
                )
    lines += ["", "| case | UNet call (2 rows) | ms | MFU |", "| --- | --- | --- | --- |"]
    for name, record in results["cases"].items():
        for key, milliseconds in record.get("unet_ms", {}).items():
            lines.append(f"| {name} | {key} | {milliseconds:.2f} | {100 * record['unet_mfu'][key]:.1f}% |")
    lines += ["", "| case | engine build s | warm start s | choices | tuning (ms per 2-row UNet call / 1-image decode) |",
              "| --- | --- | --- | --- | --- |"]
    for name, record in results["cases"].items():
        if "engine_warm_start_s" in record:
            tuning = "; ".join(f"{k}: {v:.2f}" for k, v in record["engine_cold"]["tuning_ms"].items())
            lines.append(f"| {name} | {record['engine_build_s']:.1f} | {record['engine_warm_start_s']:.1f} | "
                         f"{record['engine_cold']['choices']} | {tuning} |")
        if "engine_compiled_build_s" in record:
            lines.append(f"| {name} engine+compile | {record['engine_compiled_build_s']:.1f} (cold) | - | "
                         f"{record['engine_compiled']['choices']} | - |")
        if "stock_compile_s" in record:
            lines.append(f"| {name} stock+compile | {record['stock_compile_s']:.1f} (first call) | - | - | - |")
    for name, record in results["cases"].items():
        for error in record["errors"]:
            lines.append(f"\n{name} error: `{error.splitlines()[0]}`")
    path.write_text("\n".join(lines) + "\n")


def write_plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["cases"])
    figure, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        variants = results["cases"][name]["variants"]
        labels = list(variants)
        for offset, batch in enumerate(("batch1", "batch4")):
            values = [variants[v].get(batch, {}).get("e2e_s", 0.0) for v in labels]
            positions = [i + 0.4 * offset for i in range(len(labels))]
            axis.bar(positions, values, width=0.4, label=batch)
        axis.set_xticks([i + 0.2 for i in range(len(labels))], labels)
        axis.set_ylabel("end-to-end latency, s")
        axis.set_title(f"{name} ({results['gpu']})")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", default="sd15,sdxl")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"which of {VARIANTS + COMPILE_VARIANTS} to run besides stock (empty: stock alone)")
    parser.add_argument("--with-compile", action="store_true",
                        help="also stock diffusers with torch.compile on its UNet, and the engine with engine_compile "
                             "(adds several minutes of compiling per case)")
    parser.add_argument("--compile-batches", default="1", help="the batches stock+compile runs")
    parser.add_argument("--engine-root", type=Path, default=None,
                        help="where the engines are built (engine-CASE, engine-compiled-CASE); a temporary folder "
                             "by default. compile_engine.py --engine-dir on one of them measures a warm start")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import diffusers

    torch.backends.cuda.matmul.allow_tf32 = False
    results: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "peak_flops": PEAK_FLOPS,
        "cases": {},
    }
    batches = [int(b) for b in args.batches.split(",")]
    engine_root = args.engine_root or Path(tempfile.mkdtemp(prefix="sdserve-engines-"))
    if engine_root.is_dir() and any(engine_root.iterdir()):
        parser.error(f"--engine-root {engine_root} is not empty: its engines would be reused, not built")
    compile_batches = [int(b) for b in args.compile_batches.split(",")]
    if not set(compile_batches) <= set(batches):
        parser.error("--compile-batches must be among --batches (their stock images are the reference)")
    variants_to_run = {v for v in args.variants.split(",") if v} | (set(COMPILE_VARIANTS) if args.with_compile else set())
    unknown = variants_to_run - set(VARIANTS + COMPILE_VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}")
    for name in args.cases.split(","):
        try:
            run_case(name, batches, args.out, results, variants_to_run, compile_batches, engine_root)
        except Exception as error:
            log(f"[{name}] FAILED: {error!r}\n{traceback.format_exc()}")
            results["cases"].setdefault(name, {"variants": {}, "errors": []})["errors"].append(repr(error))
        save_json(results, args.out)
    write_markdown(results, args.out / "results.md")
    try:
        write_plot(results, args.out / "plot.png")
    except Exception as error:
        log(f"plot FAILED: {error!r}")
    print((args.out / "results.md").read_text())
    low = [
        f"{name} {variant} batch {batch}: {r['psnr_vs_stock_db']:.1f} dB"
        for name, record in results["cases"].items()
        for variant in ("engine", "engine+compile", *IMAGE_TASKS)
        for batch, r in record["variants"].get(variant, {}).items()
        if r.get("psnr_vs_stock_db", math.inf) < PSNR_FLOOR_DB
    ]
    if low:
        log(f"PSNR under {PSNR_FLOOR_DB} dB: {low}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
