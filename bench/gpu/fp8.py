#!/usr/bin/env python3
"""GPU benchmark: the SDXL UNet's transformer-block Linear layers in FP8 (torchao) against float16,
each compiled and run in a CUDA graph, on one GPU, one run.

    PYTHONPATH=python python3 bench/gpu/fp8.py --out DIR [--case sdxl] [--rows 2]

Full-size UNet with random weights (as run.py builds it), `--rows` rows (2 = one CFG step), float16,
fused QKV like the engine. Variants, each timed as one UNet call replayed from a CUDA graph:
  fp16             the transformer blocks compiled (diffusers' regional compile: every block of
                   one shape shares a compile, so each variant builds in seconds, not minutes)
  fp8 dynamic/tensor  torchao float8 weights and activations, activation scale per tensor computed
                   each call (Inductor can fuse the amax and the cast into the producer of the
                   activation, the block's LayerNorm or GELU)
  fp8 dynamic/row  the same with a scale per row of the activation and per output channel
  fp8 static       activation scales calibrated once (torchao's observer flow, 2 calls), so the
                   quantisation is a multiply and a cast with no reduction
Each FP8 variant's output is compared with float16's (PSNR over the UNet output, and max abs).
Writes results.json and results.md into --out. `--device cpu --tiny` checks the script on a CPU
(float16 path only: torchao's float8 needs compute capability 8.9).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "python"))

import run as gpu_run  # noqa: E402  (bench/gpu/run.py: the models, UNet inputs and timing)

CASE = {"height": 1024, "width": 1024}
TINY_CASE = {"height": 64, "width": 64}
REPEATS = 30


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def linears_called(unet: Any, call: Callable[[Any], Any]) -> set[str]:
    """The Linear layers one call runs (fusing QKV leaves the unfused projections unused)."""
    called: set[str] = set()
    hooks = [module.register_forward_hook(lambda *_, path=path: called.add(path))
             for path, module in unet.named_modules() if isinstance(module, torch.nn.Linear)]
    with torch.no_grad():
        call(unet)
    for hook in hooks:
        hook.remove()
    return called


def quantize(unet: Any, variant: str, calibrate: Callable[[Any], Any]) -> int:
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor, quantize_

    from sdserve_backend.engine.fp8 import KEEP_INDUCTOR_CONFIG  # every variant compiles with Inductor's defaults

    called = linears_called(unet, calibrate)

    def in_transformer_block(module: torch.nn.Module, path: str) -> bool:
        """The Linear layers FP8 targets: run by the call, inside the transformer blocks, with sizes
        cuBLAS FP8 takes."""
        return (isinstance(module, torch.nn.Linear) and "transformer_blocks" in path and path in called
                and module.in_features % 16 == 0 and module.out_features % 16 == 0)

    if variant == "fp8 dynamic/tensor":
        quantize_(unet, Float8DynamicActivationFloat8WeightConfig(granularity=PerTensor(), **KEEP_INDUCTOR_CONFIG),
                  filter_fn=in_transformer_block)
    elif variant == "fp8 dynamic/row":
        quantize_(unet, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), **KEEP_INDUCTOR_CONFIG),
                  filter_fn=in_transformer_block)
    elif variant == "fp8 static":
        from torchao.prototype.quantization.quant_api import Float8StaticActivationFloat8WeightConfig

        quantize_(unet, Float8StaticActivationFloat8WeightConfig(step="prepare", **KEEP_INDUCTOR_CONFIG),
                  filter_fn=in_transformer_block)
        for _ in range(2):
            calibrate(unet)
        quantize_(unet, Float8StaticActivationFloat8WeightConfig(step="convert", **KEEP_INDUCTOR_CONFIG),
                  filter_fn=in_transformer_block)
    else:
        raise ValueError(variant)
    return len(called)


def graphed(call: Callable[[], torch.Tensor], use_graph: bool) -> tuple[Callable[[], torch.Tensor], torch.Tensor]:
    """`call` replayed from a CUDA graph (after warm-up), and its output buffer."""
    with torch.inference_mode():
        for _ in range(3):
            output = call()
        if not use_graph:
            return call, output
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = call()
        torch.cuda.synchronize()

    def replay() -> torch.Tensor:
        graph.replay()
        return output

    return replay, output


def psnr_and_max(reference: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    a, b = reference.float(), other.float()
    peak = float(a.abs().max())
    mse = float(((a - b) ** 2).mean())
    return (99.0 if mse == 0 else 10 * torch.log10(torch.tensor(peak**2 / mse)).item()), float((a - b).abs().max())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--case", default="sdxl")
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--variants", default="fp16,fp8 dynamic/tensor,fp8 dynamic/row,fp8 static")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a small UNet of the case's shape (script check)")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cuda = args.device == "cuda"
    case = TINY_CASE if args.tiny else CASE
    results: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "case": args.case, "rows": args.rows,
        "size": f"{case['width']}x{case['height']}", "torch": torch.__version__, "variants": {},
        "gpu": torch.cuda.get_device_name() if cuda else "cpu",
    }
    try:
        import torchao

        results["torchao"] = torchao.__version__
    except ImportError:
        results["torchao"] = None

    log("building the UNet")
    if args.tiny:
        parts = tiny_parts(args.case, args.device)
    else:
        parts = gpu_run.build_models(args.case)
    base = parts["unet"].requires_grad_(False)
    base.fuse_qkv_projections()
    inputs = gpu_run.unet_inputs(parts, case, args.rows) if cuda else cpu_inputs(parts, case, args.rows)
    results["unet_tflop"] = gpu_run.unet_flops(parts, case, args.rows) / 1e12 if cuda else None

    def forward(unet: Any) -> torch.Tensor:
        return unet(**inputs, return_dict=False)[0]

    reference: torch.Tensor | None = None
    for variant in [v for v in args.variants.split(",") if v]:
        record: dict[str, Any] = {}
        results["variants"][variant] = record
        try:
            torch._dynamo.reset()
            unet = copy.deepcopy(base)
            started = time.perf_counter()
            if variant != "fp16":
                with torch.no_grad():
                    record["linears_run"] = quantize(unet, variant, forward)
            record["quantize_s"] = round(time.perf_counter() - started, 2)
            started = time.perf_counter()
            if not args.no_compile:
                unet.compile_repeated_blocks(fullgraph=True)
            call, output = graphed(lambda: forward(unet), cuda)
            record["build_s"] = round(time.perf_counter() - started, 2)
            if cuda:
                record["ms"] = round(gpu_run.unet_call_ms(call, REPEATS), 3)
                if results["unet_tflop"]:
                    record["percent_of_peak"] = round(100 * results["unet_tflop"] * 1e12 / (record["ms"] / 1e3) / gpu_run.PEAK_FLOPS, 1)
            output = call().clone()
            if reference is None:
                reference = output
            else:
                record["psnr_db"], record["max_abs"] = (round(x, 4) for x in psnr_and_max(reference, output))
            log(f"{variant}: {record}")
            del unet, call
        except Exception as error:  # one variant failing leaves the others measured
            record["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            log(f"{variant} failed: {record['error']}")
            traceback.print_exc()
        if cuda:
            torch.cuda.empty_cache()
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, args.out / "results.md")
    return 0


def tiny_parts(case: str, device: str) -> dict[str, Any]:
    from diffusers import UNet2DConditionModel

    config = json.loads((gpu_run.CONFIGS / case / "unet.json").read_text())
    config.update(block_out_channels=[32, 64, 64], layers_per_block=1, transformer_layers_per_block=[1, 1, 1]
                  if isinstance(config.get("transformer_layers_per_block"), list) else 1,
                  attention_head_dim=[2, 4, 4] if isinstance(config.get("attention_head_dim"), list) else 4,
                  cross_attention_dim=64, norm_num_groups=16)
    if config.get("addition_embed_type") == "text_time":
        config.update(projection_class_embeddings_input_dim=6 * config.get("addition_time_embed_dim", 256) + 64)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(config).to(device).eval()
    return {"unet": unet, "is_sdxl": config.get("addition_embed_type") == "text_time", "text_embeds": 64}


def cpu_inputs(parts: dict[str, Any], case: dict[str, Any], rows: int) -> dict[str, Any]:
    unet = parts["unet"]
    inputs: dict[str, Any] = {
        "sample": torch.randn((rows, unet.config.in_channels, case["height"] // 8, case["width"] // 8)),
        "timestep": torch.full((rows,), 801.0),
        "encoder_hidden_states": torch.randn((rows, 77, unet.config.cross_attention_dim)),
    }
    if parts["is_sdxl"]:
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.randn((rows, parts["text_embeds"])),
            "time_ids": torch.tensor([[case["height"], case["width"], 0, 0, case["height"], case["width"]]] * rows, dtype=torch.float32),
        }
    return inputs


def write_markdown(results: dict[str, Any], path: Path) -> None:
    lines = [f"# FP8 (torchao {results.get('torchao')}) against float16: {results['case']} UNet, {results['rows']} rows, "
             f"{results['size']}, {results['gpu']}, torch {results['torch']}, {results['date']}", "",
             f"One UNet call: {results.get('unet_tflop') or 0:.2f} TFLOP. Transformer blocks compiled (regional), CUDA graph.", "",
             "| variant | ms per call | % of dense fp16 peak | PSNR vs fp16 (dB) | max abs diff | quantise s | build s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for variant, record in results["variants"].items():
        if "error" in record:
            lines.append(f"| {variant} | failed: {record['error']} | | | | | |")
            continue
        lines.append(f"| {variant} | {record.get('ms', '-')} | {record.get('percent_of_peak', '-')} | "
                     f"{record.get('psnr_db', '-')} | {record.get('max_abs', '-')} | {record.get('quantize_s')} | {record.get('build_s')} |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
