#!/usr/bin/env python3
"""GPU benchmark: per-row LoRA (requests with different LoRAs in one UNet batch) against none, and
against diffusers' `load_lora_weights` + `fuse_lora` for one LoRA, on one GPU, one run.

    PYTHONPATH=python python3 bench/gpu/loras.py --out DIR [--cases sd15,sdxl] [--rows 8] [--rank 32]

Full-size SD 1.5 / SDXL UNets with random weights (as run.py builds them) and random LoRAs of
`--rank` on the layers LoRA trainers target (attention q/k/v/out, feed-forward, proj_in/out),
written as diffusers/PEFT `.safetensors` files and read the way the server reads them. Times one
UNet call (a denoising step's model evaluation) over `--rows` rows, float16:
  eager          sdserve's per-row LoRA on the eager UNet: 0 LoRAs, 1 LoRA on every row, 4
                 distinct LoRAs (rows split evenly among them)
  engine         the same on `engine.prepare` components (fused QKV, CUDA graphs): 0 LoRAs
                 replays the captured graph; rows with LoRAs run the model eagerly (the
                 concatenated adapters of the eager path; `unet_call(graphs=False)`)
  lora graphs    the same components with the engine's LoRA graphs (pipelines/lora_slots.py):
                 rows with LoRAs replay graphs captured with the LoRA sites reading a slot table,
                 each row gathering its own adapter (captured at the first such call: its seconds
                 and the table's size are recorded); outputs compared with the engine's eager path.
                 "lora graphs, added" is the same with the sites adding the update to the layer's
                 output instead of running the layer's matmul themselves (`fold_base=False`),
                 "lora graphs, ones per site" with every site writing its hidden's column of ones
                 (`kept_ones=False`);
                 "lora graphs (before)" is another checkout's code (`--code`, `--graphs-label`),
                 merged in from its results.json (`--merge`)
  diffusers      `load_lora_weights` (PEFT layers, unfused) and after `fuse_lora` (weights merged:
                 the base model's speed, one LoRA for every row), with the seconds that loading,
                 fusing and unfusing take, which a server switching LoRAs per request pays
It also checks that sdserve's UNet output for one LoRA matches diffusers' (max abs difference).
With --profile, the GPU kernels of one call with 0 and with 4 distinct LoRAs of each LoRA-graph
variant, by total time (profile_<case>_<variant>_<loras>.txt). Writes results.json and results.md
into --out.

    # the same run, before and after a change of lora_slots.py
    PYTHONPATH=OLD/python python3 bench/gpu/loras.py --out $OUT/before --code OLD/python \
        --sections graphs --graphs-label "lora graphs (before)" --profile
    PYTHONPATH=python python3 bench/gpu/loras.py --out $OUT --merge $OUT/before/results.json --profile
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
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

import run as gpu_run  # noqa: E402  (bench/gpu/run.py: the models and UNet inputs)

TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
LORAS = 4
REPEATS = 20
GRAPHS = "lora graphs"
ADDED = "lora graphs, added"
ONES = "lora graphs, ones per site"
BEFORE = "lora graphs (before)"
LABELS = ("eager", "engine", BEFORE, ADDED, ONES, GRAPHS)
SECTIONS = ("diffusers", "eager", "engine", "graphs")
PROFILE_TOP = 15


STARTED = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.1f} s] {message}", flush=True)


def write_loras(unet: Any, folder: Path, rank: int, count: int) -> list[str]:
    """`count` random LoRA files of `rank` for `unet`, in the diffusers/PEFT layout."""
    from safetensors.torch import save_file

    names = []
    for index in range(count):
        generator = torch.Generator().manual_seed(100 + index)
        tensors = {}
        for path, layer in unet.named_modules():
            if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)) and path.endswith(TARGETS):
                weight = layer.weight
                down = torch.randn((rank, weight.shape[1], *weight.shape[2:]), generator=generator) / weight.shape[1] ** 0.5
                up = torch.randn((weight.shape[0], rank, *([1] * (weight.ndim - 2))), generator=generator) * 0.01
                tensors[f"unet.{path}.lora_A.weight"] = down.half().contiguous()
                tensors[f"unet.{path}.lora_B.weight"] = up.half().contiguous()
        name = f"bench_lora_{index}"
        save_file(tensors, str(folder / f"{name}.safetensors"))
        names.append(name)
    return names


def time_ms(call: Callable[[], Any]) -> float:
    return gpu_run.unet_call_ms(call, REPEATS)


def table_mib(slots: Any) -> float:
    """The slot table's size (one flat table, or one table per site in older checkouts)."""
    if hasattr(slots, "nbytes"):
        return slots.nbytes / 2**20
    return sum(t.numel() * t.element_size() for t in slots.tables.values()) / 2**20


def profile_call(call: Callable[[], Any], path: Path, title: str) -> dict[str, float]:
    """The GPU kernels of one call of `call`, by total time, written to `path`; (kernels, ms)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        call()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            call()
            torch.cuda.synchronize()
    kernels = []
    for event in prof.key_averages():
        total = getattr(event, "device_time_total", None)
        if total is None:
            total = getattr(event, "cuda_time_total", 0.0)
        if total > 0:
            kernels.append((total, event.count, event.key))
    kernels.sort(reverse=True)
    count = sum(n for _, n, _ in kernels)
    busy = sum(t for t, _, _ in kernels) / 1000
    lines = [f"# {title}: {count} kernels, {busy:.2f} ms of kernel time", "", "| ms | count | µs each | kernel |", "| --- | --- | --- | --- |"]
    lines += [f"| {t / 1000:.3f} | {n} | {t / n:.1f} | {name[:140]} |" for t, n, name in kernels[:PROFILE_TOP]]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    print(text, flush=True)
    return {"kernels": count, "kernel ms": busy}


def sdserve_rows(library: Any, adapters: list[Any], unet: Any, rows: int, inputs: dict[str, Any],
                 record: dict[str, Any], label: str, graphs: bool = False,
                 profile: Path | None = None) -> dict[int, torch.Tensor]:
    """Times 0, 1 and 4 distinct LoRAs on `unet` (with the engine's LoRA graphs when `graphs`);
    returns the outputs for 1 and 4. With `profile` (a file name's start), also the kernels of a
    call with 0 and with 4 LoRAs."""
    from sdserve_backend.pipelines.lora_layers import ChosenLora

    per_lora = rows // len(adapters)
    mixes = {
        0: [(rows, ())],
        1: [(rows, (ChosenLora(adapters[0], 1.0),))],
        4: [(per_lora if i < len(adapters) - 1 else rows - per_lora * (len(adapters) - 1), (ChosenLora(a, 1.0),))
            for i, a in enumerate(adapters)],
    }

    def call(blocks: list[Any]) -> Callable[[], Any]:
        def run() -> Any:
            with library.unet_call(unet, blocks, graphs=graphs):
                return unet(**inputs, return_dict=False)[0]
        return run

    if graphs:
        # The first call with LoRA rows captures the LoRA graphs (and fills the tables).
        started = time.perf_counter()
        with torch.inference_mode():
            call(mixes[1])()
        torch.cuda.synchronize()
        record[f"{label} capture s"] = time.perf_counter() - started
        slots = library.unet_slots()
        record[f"{label} tables MiB"] = table_mib(slots)
        record[f"{label} rank per layer"] = slots.rank
        log(f"  {label}: captured in {record[f'{label} capture s']:.1f} s; tables {record[f'{label} tables MiB']:.0f} MiB "
            f"({slots.slots} entries, rank {slots.rank} per layer)")
    for count, blocks in mixes.items():
        milliseconds = time_ms(call(blocks))
        record[f"{label} {count} LoRA ms"] = milliseconds
        log(f"  {label}: {count} distinct LoRA(s) over {rows} rows: {milliseconds:.2f} ms")
    if profile is not None:
        for count in (0, 4):
            try:
                summary = profile_call(call(mixes[count]), Path(f"{profile}_{count}.txt"),
                                       f"{label}, {count} distinct LoRA(s) over {rows} rows")
                record[f"{label} {count} LoRA kernels"] = summary["kernels"]
                record[f"{label} {count} LoRA kernel ms"] = summary["kernel ms"]
            except Exception as error:  # noqa: BLE001 - a profile is extra: the timings stand without it
                log(f"  {label}: profile failed: {error!r}")
    with torch.inference_mode():
        outputs = {count: call(mixes[count])().float() for count in (0, 1, 4)}
    # What the adapters change: the differences between paths below mean little without it.
    record[f"{label} LoRA effect max abs"] = (outputs[1] - outputs[0]).abs().max().item()
    return outputs


def load_library(components: Any, folder: Path, names: list[str], record: dict[str, Any], label: str) -> tuple[Any, list[Any]]:
    from sdserve_backend.pipelines.lora_library import LoraLibrary

    library = LoraLibrary(components, folder)
    started = time.perf_counter()
    adapters = [library.load(name) for name in names]
    torch.cuda.synchronize()
    record[f"{label} load 4 LoRAs s"] = time.perf_counter() - started
    return library, adapters


def run_case(name: str, rows: int, rank: int, results: dict[str, Any], sections: tuple[str, ...],
             graphs_label: str, out: Path, profile: bool) -> None:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline  # noqa: F401

    from sdserve_backend.engine import prepare
    from sdserve_backend.pipelines.device import Placement

    case = gpu_run.CASES[name]
    record: dict[str, Any] = {"rows": rows, "rank": rank, "height": case["height"], "width": case["width"]}
    results["cases"][name] = record
    folder = Path(tempfile.mkdtemp(prefix=f"sdserve-loras-{name}-"))

    # 1. diffusers: load_lora_weights (unfused), then fuse_lora, on a fresh model
    parts: dict[str, Any] | None = gpu_run.build_models(name)
    assert parts is not None
    names = write_loras(parts["unet"], folder, rank, LORAS)
    reference = None
    if "diffusers" in sections:
        inputs = gpu_run.unet_inputs(parts, case, rows)
        unet = parts["unet"]
        record["base eager ms"] = time_ms(lambda: unet(**inputs, return_dict=False))
        reference = diffusers_rows(parts, folder, names[0], inputs, record) if has_peft() else None
        log(f"[{name}] diffusers: {json.dumps({k: v for k, v in record.items() if k.startswith(('base', 'diffusers'))})}")
        del unet
        parts = None  # the LoRA layers of diffusers' PEFT stay in it
        gc.collect()
        torch.cuda.empty_cache()

    # 2. sdserve on the eager UNet
    if "eager" in sections:
        parts = parts if parts is not None else gpu_run.build_models(name)
        components = gpu_run.sdserve_components(parts)
        inputs = gpu_run.unet_inputs(parts, case, rows)
        library, adapters = load_library(components, folder, names, record, "eager")
        ours = sdserve_rows(library, adapters, components.unet, rows, inputs, record, "eager")[1]
        if reference is not None:
            difference = (ours - reference).abs().max().item()
            record["eager vs diffusers fused max abs diff"] = difference
            record["reference max abs"] = reference.abs().max().item()
            log(f"[{name}] one LoRA: max |sdserve - diffusers fused| = {difference:.4g} "
                f"(outputs up to {record['reference max abs']:.3g})")
        del components, ours, library, adapters
        parts = None
        gc.collect()
        torch.cuda.empty_cache()

    # 3. sdserve on the engine (fused QKV, CUDA graphs for the base model): LoRA rows eagerly, then
    #    through the LoRA graphs, the sites adding the update to the layer's output and (this
    #    checkout's default) running the layer's matmul themselves
    parts = parts if parts is not None else gpu_run.build_models(name)
    placement = Placement(device=torch.device("cuda"), dtype=torch.float16, warning=None)
    components = prepare(gpu_run.sdserve_components(parts), placement, engine_dir=None, max_rows=rows,
                         height=case["height"], width=case["width"])
    inputs = gpu_run.unet_inputs(parts, case, rows)
    library, adapters = load_library(components, folder, names, record, "engine")
    ours = sdserve_rows(library, adapters, components.unet, rows, inputs, record, "engine") if "engine" in sections else None
    slots = library.unet_slots()
    variants: list[tuple[str, dict[str, bool]]] = [(graphs_label, {})]
    if hasattr(slots, "fold_base"):
        variants = [(ADDED, {"fold_base": False}), (ONES, {"fold_base": True, "kept_ones": False}),
                    (GRAPHS, {"fold_base": True, "kept_ones": True})]
    slotted: dict[str, dict[int, torch.Tensor]] = {}
    for label, settings in variants if "graphs" in sections else []:
        for setting, value in settings.items():
            setattr(slots, setting, value)
        components.unet.lora_calls.clear()  # captured again, for this variant
        stem = out / f"profile_{name}_{label.replace(' ', '_').replace(',', '').replace('(', '').replace(')', '')}"
        slotted[label] = sdserve_rows(library, adapters, components.unet, rows, inputs, record, label, graphs=True,
                                      profile=stem if profile else None)
        for count in (1, 4):
            if ours is not None:
                record[f"{label} vs engine {count} LoRA max abs diff"] = (slotted[label][count] - ours[count]).abs().max().item()
        if reference is not None:
            record[f"{label} vs diffusers fused max abs diff"] = (slotted[label][1] - reference).abs().max().item()
        if ours is not None:
            log(f"[{name}] {label} against the engine's eager LoRA path: max abs diff "
                f"{record[f'{label} vs engine 1 LoRA max abs diff']:.3g} (1 LoRA), "
                f"{record[f'{label} vs engine 4 LoRA max abs diff']:.3g} (4 distinct)")
    for label in (ADDED, ONES):
        if label in slotted and GRAPHS in slotted:
            for count in (1, 4):
                record[f"{label} vs {GRAPHS} {count} LoRA max abs diff"] = (slotted[label][count] - slotted[GRAPHS][count]).abs().max().item()
    if reference is not None and ours is not None:
        record["engine vs diffusers fused max abs diff"] = (ours[1] - reference).abs().max().item()
    add_overheads(record)
    del components, parts, ours, slotted, library, adapters, slots
    gc.collect()
    torch.cuda.empty_cache()


def add_overheads(record: dict[str, Any]) -> None:
    for label in LABELS:
        if f"{label} 4 LoRA ms" in record:
            base = record[f"{label} 0 LoRA ms"]
            for count in (1, 4):
                record[f"{label} {count} LoRA overhead %"] = 100 * (record[f"{label} {count} LoRA ms"] / base - 1)


def merge(results: dict[str, Any], other: dict[str, Any], label: str) -> None:
    """The keys of `label` from another run's results (another checkout, same machine) into these."""
    results[f"{label} from"] = {key: other.get(key) for key in ("gpu", "torch", "date", "code")}
    for name, theirs in other["cases"].items():
        mine = results["cases"].setdefault(name, {})
        mine.update({key: value for key, value in theirs.items() if key.startswith(label)})
        mine.setdefault("errors", []).extend(f"{label}: {error}" for error in theirs.get("errors", []))
        if not mine["errors"]:
            del mine["errors"]
        add_overheads(mine)


def has_peft() -> bool:
    try:
        import peft  # noqa: F401  (diffusers' load_lora_weights needs it)
    except ImportError:
        log("peft is not installed: the diffusers rows are skipped (pip install peft)")
        return False
    return True


def diffusers_rows(parts: dict[str, Any], folder: Path, name: str, inputs: dict[str, Any], record: dict[str, Any]) -> torch.Tensor:
    """Times diffusers' unfused and fused LoRA on `parts`' UNet; returns the fused output."""
    unet = parts["unet"]
    pipe = gpu_run.stock_pipeline(parts)
    torch.cuda.synchronize()
    started = time.perf_counter()
    pipe.load_lora_weights(str(folder), weight_name=f"{name}.safetensors", adapter_name="one")
    torch.cuda.synchronize()
    record["diffusers load_lora_weights s"] = time.perf_counter() - started
    record["diffusers unfused 1 LoRA ms"] = time_ms(lambda: unet(**inputs, return_dict=False))
    started = time.perf_counter()
    pipe.fuse_lora(lora_scale=1.0)
    torch.cuda.synchronize()
    record["diffusers fuse_lora s"] = time.perf_counter() - started
    record["diffusers fused 1 LoRA ms"] = time_ms(lambda: unet(**inputs, return_dict=False))
    with torch.inference_mode():
        reference = unet(**inputs, return_dict=False)[0].float()
    started = time.perf_counter()
    pipe.unfuse_lora()
    pipe.unload_lora_weights()
    torch.cuda.synchronize()
    record["diffusers unfuse+unload s"] = time.perf_counter() - started
    return reference


def write_markdown(results: dict[str, Any], path: Path) -> None:
    lines = [f"# Per-row LoRA, {results['gpu']}, torch {results['torch']}, diffusers {results['diffusers']}, {results['date']}", ""]
    lines += ["| case | rows | rank | variant | 0 LoRAs ms | 1 LoRA ms | 4 distinct LoRAs ms | 1 LoRA % | 4 LoRAs % |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results["cases"].items():
        for label in LABELS:
            if f"{label} 4 LoRA ms" in r:
                lines.append(f"| {name} | {r.get('rows', '-')} | {r.get('rank', '-')} | sdserve {label} | {r[f'{label} 0 LoRA ms']:.2f} | "
                             f"{r[f'{label} 1 LoRA ms']:.2f} | {r[f'{label} 4 LoRA ms']:.2f} | "
                             f"{r[f'{label} 1 LoRA overhead %']:+.1f} | {r[f'{label} 4 LoRA overhead %']:+.1f} |")
        if "diffusers fused 1 LoRA ms" in r:
            lines.append(f"| {name} | {r.get('rows', '-')} | {r.get('rank', '-')} | diffusers load_lora_weights (unfused) | {r['base eager ms']:.2f} | "
                         f"{r['diffusers unfused 1 LoRA ms']:.2f} | - | - | - |")
            lines.append(f"| {name} | {r.get('rows', '-')} | {r.get('rank', '-')} | diffusers + fuse_lora | {r['base eager ms']:.2f} | "
                         f"{r['diffusers fused 1 LoRA ms']:.2f} | - | - | - |")
    lines += ["", "| case | diffusers load s | fuse s | unfuse+unload s | sdserve load 4 s | max abs diff vs diffusers (eager / engine / lora graphs) "
              "| one LoRA's effect (max abs) | lora graphs vs engine eager (1 / 4 LoRAs) | LoRA graphs capture s | tables MiB | errors |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results["cases"].items():
        def get(key: str, form: str = "{:.3f}") -> str:
            return form.format(r[key]) if key in r else "-"
        lines.append(f"| {name} | {get('diffusers load_lora_weights s')} | {get('diffusers fuse_lora s')} | "
                     f"{get('diffusers unfuse+unload s')} | {get('eager load 4 LoRAs s')} | "
                     f"{get('eager vs diffusers fused max abs diff', '{:.3g}')} / {get('engine vs diffusers fused max abs diff', '{:.3g}')} / "
                     f"{get('lora graphs vs diffusers fused max abs diff', '{:.3g}')} | "
                     f"{get('lora graphs LoRA effect max abs', '{:.3g}')} | "
                     f"{get('lora graphs vs engine 1 LoRA max abs diff', '{:.3g}')} / {get('lora graphs vs engine 4 LoRA max abs diff', '{:.3g}')} | "
                     f"{get('lora graphs capture s', '{:.1f}')} | {get('lora graphs tables MiB', '{:.0f}')} | "
                     f"{'; '.join(r.get('errors', [])) or '-'} |")
    profiled = [(name, label) for name, r in results["cases"].items() for label in LABELS if f"{label} 4 LoRA kernels" in r]
    if profiled:
        lines += ["", "Kernels of one call (torch.profiler over one replay; kernel time is the sum of the kernels' times):", "",
                  "| case | variant | kernels, 0 LoRAs | kernels, 4 LoRAs | kernel ms, 0 LoRAs | kernel ms, 4 LoRAs |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name, label in profiled:
            r = results["cases"][name]
            lines.append(f"| {name} | sdserve {label} | {r.get(f'{label} 0 LoRA kernels', '-')} | {r[f'{label} 4 LoRA kernels']} | "
                         f"{r.get(f'{label} 0 LoRA kernel ms', float('nan')):.2f} | {r[f'{label} 4 LoRA kernel ms']:.2f} |")
    compared = [(name, key, value) for name, r in results["cases"].items() for key, value in r.items()
                if key.startswith((ADDED, ONES, BEFORE)) and " vs " in key]
    if compared:
        lines += ["", "| case | comparison | max abs diff |", "| --- | --- | --- |"]
        lines += [f"| {name} | {key.removesuffix(' max abs diff')} | {value:.3g} |" for name, key, value in compared]
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", default="sd15,sdxl")
    parser.add_argument("--rows", type=int, default=8, help="UNet rows per call (guidance doubles images: 8 rows = 4 images)")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"which of {','.join(SECTIONS)} to run")
    parser.add_argument("--code", type=Path, help="the folder sdserve_backend is imported from (another checkout's python/)")
    parser.add_argument("--graphs-label", default=BEFORE,
                        help="the name of the LoRA-graph rows when the code has one variant only (an older checkout)")
    parser.add_argument("--merge", type=Path, help="another run's results.json whose --graphs-label rows join these")
    parser.add_argument("--profile", action="store_true", help="kernel profiles of the LoRA graphs")
    parser.add_argument("--rewrite", action="store_true",
                        help="run nothing: results.md from --out's results.json (with --merge's rows)")
    args = parser.parse_args()
    sections = tuple(args.sections.split(","))
    if set(sections) - set(SECTIONS):
        parser.error(f"unknown sections {sorted(set(sections) - set(SECTIONS))}")
    if args.code is not None:
        sys.path.insert(0, str(args.code.resolve()))
    args.out.mkdir(parents=True, exist_ok=True)
    import diffusers

    import sdserve_backend

    log(f"sdserve_backend from {Path(sdserve_backend.__file__).parent}")

    torch.backends.cuda.matmul.allow_tf32 = False
    if args.rewrite:
        results: dict[str, Any] = json.loads((args.out / "results.json").read_text())
    else:
        results = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "diffusers": diffusers.__version__,
                   "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "code": str(Path(sdserve_backend.__file__).parent), "cases": {}}
    failed = False
    for name in args.cases.split(",") if not args.rewrite else []:
        try:
            run_case(name, args.rows, args.rank, results, sections, args.graphs_label, args.out, args.profile)
        except Exception as error:  # noqa: BLE001 - record it and go on with the next case
            failed = True
            log(f"[{name}] FAILED: {error!r}\n{traceback.format_exc()}")
            results["cases"].setdefault(name, {}).setdefault("errors", []).append(repr(error))
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if args.merge is not None:
        try:
            merge(results, json.loads(args.merge.read_text()), args.graphs_label)
        except (OSError, ValueError, KeyError) as error:
            failed = True
            log(f"could not merge {args.merge}: {error!r}")
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, args.out / "results.md")
    print((args.out / "results.md").read_text())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
