#!/usr/bin/env python3
"""Does one compile with the row count symbolic serve a single row as well as a one-row compile?

    python3 bench/gpu/row_graphs.py --case sdxl --out DIR [--vae-only] [--go-flag FILE]

On random-weight full-size models (`run.py`'s `build_models`), prepared as the engine prepares them
(fused QKV, channels_last UNet, a float32 VAE in bfloat16, cuDNN attention): the UNet forward and
the VAE decoder each compiled ahead of time twice, once with the row count symbolic (marked at 2
rows, under `backed_size_oblivious` as the engine compiles it, `_rows_symbolic_from_one`) and once
for one row. Then, when
`--go-flag` exists (a peer has finished with the GPU; at most 400 s later), each is replayed from a
CUDA graph: milliseconds per call at 1 and 2 rows (the decoder also 4 images), and each output
against eager's. Writes `one_row_<case>.json` into --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "python"))

import run as base  # noqa: E402

from sdserve_backend.engine.attention import attention_backend  # noqa: E402
from sdserve_backend.engine.precompiled import _ahead_of_time  # noqa: E402
from sdserve_backend.engine.prepare import _fuse_qkv  # noqa: E402
from sdserve_backend.engine.runners import _rows_symbolic_from_one, decode_forward, plain_forward  # noqa: E402

STARTED = time.perf_counter()
ATTENTION = "cudnn"


def log(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.1f} s] {message}", flush=True)


def compile_ahead(function: Callable[..., Any], model: Any, args: tuple[Any, ...]) -> tuple[Any, float]:
    started = time.perf_counter()
    with attention_backend(ATTENTION), torch.inference_mode(), _rows_symbolic_from_one():
        compiled = _ahead_of_time(function, "inductor").aot_compile(((model, *args), {}))
    getattr(compiled, "disable_guard_check", lambda: None)()  # the engine dispatches by shape itself
    return compiled, time.perf_counter() - started


def graphed(function: Callable[..., Any], model: Any, args: tuple[Any, ...]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), attention_backend(ATTENTION):
        for _ in range(2):
            function(model, *args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), attention_backend(ATTENTION):
        output = function(model, *args)
    graph.replay()
    torch.cuda.synchronize()
    return graph, output


def difference(output: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    output, reference = output.float(), reference.float()
    error = output - reference
    return {"max_abs": error.abs().max().item(),
            "rel_rms": (error.pow(2).mean().sqrt() / reference.pow(2).mean().sqrt()).item()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=tuple(base.CASES), default="sdxl")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--vae-only", action="store_true")
    parser.add_argument("--go-flag", type=Path, default=None)
    args = parser.parse_args()
    case = base.CASES[args.case]
    parts = base.build_models(args.case)
    unet, vae = parts["unet"], parts["vae_sdserve"]
    _fuse_qkv(unet)
    _fuse_qkv(vae)
    if vae.dtype == torch.float32:
        vae.to(dtype=torch.bfloat16)
    unet.to(memory_format=torch.channels_last)

    def unet_args(rows: int, dynamic: bool) -> tuple[Any, ...]:
        inputs = base.unet_inputs(parts, case, rows)
        sample = inputs["sample"].contiguous(memory_format=torch.channels_last)
        added = inputs.get("added_cond_kwargs")
        tensors = [sample, inputs["timestep"], inputs["encoder_hidden_states"], *(added.values() if added else ())]
        for tensor in tensors if dynamic else ():
            torch._dynamo.mark_dynamic(tensor, 0)
        return sample, inputs["timestep"], inputs["encoder_hidden_states"], added

    def vae_args(rows: int, dynamic: bool) -> tuple[Any, ...]:
        latents = torch.randn((rows, 4, case["height"] // 8, case["width"] // 8), device="cuda", dtype=vae.dtype,
                              generator=torch.Generator("cuda").manual_seed(3))
        if dynamic:
            torch._dynamo.mark_dynamic(latents, 0)
        return (latents,)

    record: dict[str, Any] = {"case": args.case, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    models = [("vae", vae, decode_forward, vae_args, (1, 2, 4))]
    if not args.vae_only:
        models.insert(0, ("unet", unet, plain_forward, unet_args, (1, 2)))
    compiled: dict[str, Any] = {}
    for label, model, function, make_args, _ in models:
        for kind, rows, dynamic in (("sym", 2, True), ("one", 1, False)):
            compiled[f"{label}_{kind}"], seconds = compile_ahead(function, model, make_args(rows, dynamic))
            record[f"compile_s_{label}_{kind}"] = seconds
            log(f"compiled {label} ({kind}) in {seconds:.1f} s")
    waited = time.perf_counter()
    while args.go_flag is not None and not args.go_flag.exists() and time.perf_counter() - waited < 400:
        time.sleep(2)
    with torch.inference_mode():
        for label, model, function, make_args, row_counts in models:
            repeats = 20 if label == "unet" else 5
            for rows in row_counts:
                inputs = make_args(rows, False)
                with attention_backend(ATTENTION):
                    reference = function(model, *inputs)
                graph, output = graphed(compiled[f"{label}_sym"], model, inputs)
                record[f"{label}_sym_rows{rows}_vs_eager"] = difference(output, reference)
                record[f"{label}_sym_rows{rows}_ms"] = base.unet_call_ms(graph.replay, repeats)
                log(f"{label} symbolic, {rows} rows: {record[f'{label}_sym_rows{rows}_ms']:.2f} ms")
                if rows == 1:
                    one_graph, one_output = graphed(compiled[f"{label}_one"], model, inputs)
                    record[f"{label}_one_rows1_vs_eager"] = difference(one_output, reference)
                    record[f"{label}_sym_vs_one_rows1"] = difference(output, one_output)
                    record[f"{label}_one_rows1_ms"] = base.unet_call_ms(one_graph.replay, repeats)
                    log(f"{label} one-row compile: {record[f'{label}_one_rows1_ms']:.2f} ms")
                    del one_graph, one_output
                del graph, output
                torch.cuda.empty_cache()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"one_row_{args.case}.json").write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
