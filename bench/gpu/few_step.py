#!/usr/bin/env python3
"""GPU benchmark: few-step generation and the named scheduler variants, sdserve against diffusers,
float16, one GPU, one run.

    PYTHONPATH=python python3 bench/gpu/few_step.py --out DIR [--cases sd15,sdxl] [--rows turbo,lcm,...]
    PYTHONPATH=python python3 bench/gpu/few_step.py --out DIR --tiny     # CPU, tiny models: checks it runs

Full-size SD 1.5 / SDXL architectures with RANDOM weights (run.py's `build_models`; no download),
each row one image at the case's size, timed end to end (median of 3 after a warm-up) for
diffusers' StableDiffusion(XL)Pipeline and sdserve's TextToImagePipeline (eager, same components),
with the PSNR of sdserve's image against diffusers' for the same seed. Rows:
  turbo          SD-Turbo / SDXL-Turbo recipe: Euler ancestral, "trailing" timesteps, 1 step, guidance 0
  lcm            an LCM UNet (time_cond_proj_dim 256: the guidance scale embedded), LCM scheduler,
                 4 steps, guidance 8.5
  lcm_lora       a random LoRA on the layers LCM-LoRA adapts (rank 64, convolutions included), per
                 request in sdserve, diffusers' load_lora_weights; LCM scheduler, 4 steps, guidance 1
                 (needs peft for diffusers' side)
  dpm++_2m_karras, dpm++_sde_karras, euler_karras   20 steps, guidance 7.5 (dpm++_sde needs torchsde)
Step noise: sdserve draws the LCM scheduler's step noise on the GPU (from the request's seed), diffusers
from its CPU generator, so their multi-step LCM images differ by design; for the PSNR column sdserve
also runs once with its step noise from the CPU generator (`same_noise_as_diffusers`), which is what the
column compares. DPM++ SDE's Brownian tree takes the request's seed on both sides. PSNR floor: 30 dB.
Writes results.json (after each row) and results.md into --out.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "python"))

PROMPT = "a photo of a cat and a dog"
SEED = 1234
PSNR_FLOOR_DB = 30.0
REPEATS = 3
LCM_TIME_COND_PROJ_DIM = 256
LCM_LORA_RANK = 64


@dataclasses.dataclass(frozen=True)
class Row:
    scheduler: str  # sdserve's name ("" = the model's own)
    steps: int
    guidance: float
    model: str = "base"  # base | turbo | lcm
    lora: bool = False


ROWS: dict[str, Row] = {
    "turbo": Row("", 1, 0.0, model="turbo"),
    "lcm": Row("", 4, 8.5, model="lcm"),
    "lcm_lora": Row("lcm", 4, 1.0, lora=True),
    "dpm++_2m_karras": Row("dpm++_2m_karras", 20, 7.5),
    "dpm++_sde_karras": Row("dpm++_sde_karras", 20, 7.5),
    "euler_karras": Row("euler_karras", 20, 7.5),
}


def log(message: str) -> None:
    print(message, flush=True)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


# ---------------------------------------------------------------------------------------------
# Models


@dataclasses.dataclass
class Setup:
    """One case's parts for one row: diffusers' pipeline and sdserve's components share them."""

    reference: Any
    components: Any
    height: int
    width: int
    device: torch.device


def turbo_scheduler_config(config: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    from diffusers import EulerAncestralDiscreteScheduler

    made = EulerAncestralDiscreteScheduler.from_config(config, timestep_spacing="trailing")
    return EulerAncestralDiscreteScheduler, dict(made.config)


def full_size_setup(case: str, row: Row) -> Setup:
    """Random-weight full-size models on CUDA, float16 (run.py's), made into the row's model."""
    import run as gpu_run  # bench/gpu/run.py
    from diffusers import LCMScheduler, UNet2DConditionModel

    parts = gpu_run.build_models(case)
    if row.model == "lcm":
        config = dict(parts["unet"].config)
        config["time_cond_proj_dim"] = LCM_TIME_COND_PROJ_DIM
        torch.manual_seed(gpu_run.WEIGHTS_SEED)
        with torch.device("cuda"):
            parts["unet"] = UNet2DConditionModel.from_config(config).half().eval()
        parts["scheduler_class"] = LCMScheduler
        parts["scheduler_config"] = dict(LCMScheduler.from_config(parts["scheduler_config"]).config)
    elif row.model == "turbo":
        parts["scheduler_class"], parts["scheduler_config"] = turbo_scheduler_config(parts["scheduler_config"])
    size = gpu_run.CASES[case]
    if row.model == "turbo" and parts["is_sdxl"]:
        size = {"height": 512, "width": 512}  # SDXL-Turbo's size
    return Setup(gpu_run.stock_pipeline(parts), gpu_run.sdserve_components(parts), size["height"], size["width"],
                 torch.device("cuda"))


def tiny_setup(case: str, row: Row, root: Path) -> Setup:
    """The tiny models on the CPU, float32 (their -turbo and -lcm variants for those rows)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from sdserve_backend.pipelines import load_components
    from sdserve_backend.tiny_model import make_tiny_model

    variant = {"sd15": "sd", "sdxl": "sdxl"}[case] + {"base": "", "turbo": "-turbo", "lcm": "-lcm"}[row.model]
    folder = make_tiny_model(root / variant, variant, seed=0)
    pipeline_class = StableDiffusionXLPipeline if case == "sdxl" else StableDiffusionPipeline
    extra = {} if case == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    reference = pipeline_class.from_pretrained(folder, local_files_only=True, **extra)
    reference.set_progress_bar_config(disable=True)
    components = load_components(folder, torch.device("cpu"), torch.float32)
    return Setup(reference, components, 128, 128, torch.device("cpu"))


def write_lcm_lora(unet: Any, folder: Path, rank: int) -> str:
    """A random LoRA on the layers LCM-LoRA adapts, diffusers/PEFT keys, float16."""
    from safetensors.torch import save_file

    from sdserve_backend.tiny_lora import LCM_LORA_LAYERS

    generator = torch.Generator().manual_seed(77)
    tensors = {}
    for path, layer in unet.named_modules():
        if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)) and path.endswith(LCM_LORA_LAYERS):
            weight = layer.weight
            fan_in = weight[0].numel()
            down = torch.randn((rank, weight.shape[1], *weight.shape[2:]), generator=generator) / fan_in**0.5
            up = torch.randn((weight.shape[0], rank, *([1] * (weight.ndim - 2))), generator=generator) * 0.01
            tensors[f"unet.{path}.lora_A.weight"] = down.to(weight.dtype).contiguous()
            tensors[f"unet.{path}.lora_B.weight"] = up.to(weight.dtype).contiguous()
    save_file(tensors, str(folder / "lcm_lora.safetensors"))
    return "lcm_lora"


# ---------------------------------------------------------------------------------------------
# Runs


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(run: Callable[[], np.ndarray], device: torch.device, repeats: int) -> tuple[float, list[float], np.ndarray]:
    run()  # warm-up
    seconds, images = [], None
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        images = run()
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    assert images is not None
    return statistics.median(seconds), seconds, images


def diffusers_scheduler(setup: Setup, row: Row) -> Any:
    from sdserve_backend.pipelines.schedulers import make_scheduler

    components = setup.components
    # The same scheduler sdserve builds for the name (the documented diffusers class and options),
    # with DPM++ SDE's Brownian tree seeded as sdserve seeds it.
    return make_scheduler(row.scheduler, components.scheduler_class, components.scheduler_config, SEED)


def run_diffusers(setup: Setup, row: Row) -> np.ndarray:
    setup.reference.scheduler = diffusers_scheduler(setup, row)
    output = setup.reference(
        prompt=PROMPT, height=setup.height, width=setup.width, num_inference_steps=row.steps,
        guidance_scale=row.guidance, generator=torch.Generator("cpu").manual_seed(SEED), output_type="np",
    )
    return (np.asarray(output.images) * 255).round().astype(np.uint8)


@contextlib.contextmanager
def same_noise_as_diffusers() -> Iterator[None]:
    """sdserve's step noise from the latents' CPU generator, as diffusers draws it (for PSNR only)."""
    from sdserve_backend.pipelines.tasks.text_to_image import TextToImage

    original = TextToImage.step_noise_generator
    TextToImage.step_noise_generator = lambda self, request, generator: generator  # type: ignore[method-assign]
    try:
        yield
    finally:
        TextToImage.step_noise_generator = original  # type: ignore[method-assign]


def run_sdserve(pipeline: Any, setup: Setup, row: Row) -> np.ndarray:
    from sdserve_backend.pipelines import GenerationRequest, GenerationSettings

    loras = pipeline.loras.choose((("lcm_lora", 1.0),)) if row.lora else ()
    request = GenerationRequest(prompts=[PROMPT], seed=SEED, loras=loras)
    settings = GenerationSettings(setup.height, setup.width, row.steps, row.guidance, row.scheduler)
    return pipeline([request], settings)[0]


def run_row(case: str, name: str, row: Row, tiny_root: Path | None, repeats: int) -> dict[str, Any]:
    from sdserve_backend.pipelines import TextToImagePipeline

    setup = tiny_setup(case, row, tiny_root) if tiny_root is not None else full_size_setup(case, row)
    record: dict[str, Any] = {"steps": row.steps, "guidance": row.guidance, "scheduler": row.scheduler or "(model's)",
                              "height": setup.height, "width": setup.width}
    lora_dir = None
    if row.lora:
        # sdserve wraps the layers a LoRA targets in its own; diffusers' PEFT layers go on a copy.
        setup.reference.unet = copy.deepcopy(setup.reference.unet)
        lora_dir = Path(tempfile.mkdtemp(prefix="sdserve-lcm-lora-"))
        write_lcm_lora(setup.components.unet, lora_dir, LCM_LORA_RANK)
    pipeline = TextToImagePipeline(setup.components, prompt_cache_size=0, lora_dir=lora_dir)
    record["sdserve_s"], record["sdserve_all_s"], _ = timed(lambda: run_sdserve(pipeline, setup, row), setup.device, repeats)
    with same_noise_as_diffusers():
        ours = run_sdserve(pipeline, setup, row)
    if row.lora:
        try:
            setup.reference.load_lora_weights(str(lora_dir), weight_name="lcm_lora.safetensors", adapter_name="lcm")
        except Exception as error:  # peft missing: no diffusers side for this row
            record["diffusers"] = f"skipped: {type(error).__name__}: {error}"
            return record
    record["diffusers_s"], record["diffusers_all_s"], theirs = timed(lambda: run_diffusers(setup, row), setup.device,
                                                                     repeats)
    record["psnr_db"] = psnr(ours[0], theirs[0])
    record["speedup"] = record["diffusers_s"] / record["sdserve_s"]
    return record


# ---------------------------------------------------------------------------------------------
# Report


def write_markdown(results: dict[str, Any], path: Path) -> None:
    lines = [f"# Few-step and scheduler rows ({results['device']}, {results['dtype']}, {results['date']})", "",
             "| case | row | steps | guidance | size | diffusers s | sdserve s | speed-up | PSNR dB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for case, rows in results["cases"].items():
        for name, record in rows.items():
            if "error" in record:
                lines.append(f"| {case} | {name} | | | | error: {record['error']} | | | |")
                continue
            size = f"{record['height']}x{record['width']}"
            diffusers_s = f"{record['diffusers_s']:.3f}" if "diffusers_s" in record else record.get("diffusers", "")
            speedup = f"{record['speedup']:.2f}x" if "speedup" in record else ""
            psnr_db = f"{record['psnr_db']:.1f}" if "psnr_db" in record else ""
            lines.append(f"| {case} | {name} | {record['steps']} | {record['guidance']} | {size} | {diffusers_s} | "
                         f"{record['sdserve_s']:.3f} | {speedup} | {psnr_db} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", default="sd15,sdxl")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU in float32: checks the script runs")
    parser.add_argument("--repeats", type=int, default=REPEATS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.tiny and not torch.cuda.is_available():
        log("no GPU: run with --tiny to check the script on the CPU")
        return 2
    tiny_root = Path(tempfile.mkdtemp(prefix="sdserve-few-step-")) if args.tiny else None
    results: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": "CPU (tiny models)" if args.tiny else torch.cuda.get_device_name(),
        "dtype": "float32" if args.tiny else "float16",
        "torch": torch.__version__,
        "cases": {},
    }
    failed = False
    for case in args.cases.split(","):
        results["cases"][case] = {}
        for name in args.rows.split(","):
            log(f"[{case}] {name} ...")
            try:
                record = run_row(case, name, ROWS[name], tiny_root, args.repeats)
            except Exception as error:
                traceback.print_exc()
                record = {"error": f"{type(error).__name__}: {error}"}
                failed = True
            results["cases"][case][name] = record
            log(f"[{case}] {name}: {json.dumps({k: v for k, v in record.items() if not k.endswith('_all_s')})}")
            if record.get("psnr_db", math.inf) < PSNR_FLOOR_DB:
                failed = True
            (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    write_markdown(results, args.out / "results.md")
    log((args.out / "results.md").read_text())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
