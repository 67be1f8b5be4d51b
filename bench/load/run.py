#!/usr/bin/env python3
"""Load benchmark: one model served three ways, driven through the HTTP server by `sdserve client`.

    python3 bench/load/run.py --out DIR [--case sd15] [--case sdxl] [--quick]

For each case a full-size random-weight model (bench/load/make_model.py) is served as
  none     no batching (max_batch_size 1)
  request  Triton's request-level dynamic batching (step_batching "false", 50 ms queue delay)
  step     sdserve's step-level batching (the diffusion default)
one at a time (loaded and unloaded through the repository API, so the GPU serves only one), and
measured with closed-loop clients (1, 4, 16, 64), 16 closed-loop clients with mixed step counts,
and open-loop Poisson arrivals at several rates. Writes results.json, results.md and
latency_vs_throughput.png into --out. Needs node (bin/sdserve built), the Python packages, a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SDSERVE = str(ROOT / "bin" / "sdserve")
URL = "http://localhost:8000"
MODES = ("none", "request", "step")


@dataclass(frozen=True)
class Case:
    size: int
    steps: int
    guidance: float
    max_batch: int
    # (clients, requests per client) for the closed-loop runs.
    closed: tuple[tuple[int, int], ...]
    mixed_steps: str
    mixed: tuple[int, int]
    # (requests per second, requests) for the open-loop runs.
    poisson: tuple[tuple[float, int], ...]
    # Closed-loop client counts the unbatched mode skips (its throughput is flat from 4 clients).
    none_skips: tuple[int, ...] = field(default=(64,))
    # Serve these weights instead of writing a random-weight model (the tiny case: checks the
    # script on a CPU in seconds).
    weights: Path | None = None


CASES = {
    "sd15": Case(512, 50, 7.5, 16, ((1, 4), (4, 2), (16, 2), (64, 1)), "20-50", (16, 2),
                 ((1.0, 16), (2.0, 24), (4.0, 32), (6.0, 36))),
    "sdxl": Case(1024, 30, 5.0, 8, ((1, 2), (4, 1), (16, 1)), "20-50", (16, 1),
                 ((0.3, 6), (0.6, 8), (1.0, 10))),
    "tiny": Case(64, 4, 7.5, 4, ((1, 2), (4, 2)), "2-6", (4, 2), ((4.0, 8),),
                 weights=ROOT / "model_repository" / "tiny_sd" / "1"),
}


def log(message: str) -> None:
    print(message, flush=True)


def write_config(repo: Path, name: str, case: Case, weights: Path, max_batch: int, step_batching: bool,
                 compile_unet: bool) -> None:
    template = (HERE / "config.pbtxt.template").read_text()
    text = (template.replace("@MAX_BATCH@", str(max_batch)).replace("@STEP_BATCHING@", str(step_batching).lower())
            .replace("@SIZE@", str(case.size)).replace("@STEPS@", str(case.steps)).replace("@WEIGHTS@", str(weights))
            .replace("@GUIDANCE@", str(case.guidance)).replace("@COMPILE@", str(compile_unet).lower()))
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(text)


def http(method: str, path: str, timeout: float = 900) -> tuple[int, str]:
    request = urllib.request.Request(URL + path, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, str(error)


def start_server(repo: Path, weights: Path, log_path: Path) -> subprocess.Popen[bytes]:
    # The configs name weights outside their model folders: the server allows only those roots.
    server = subprocess.Popen(
        [SDSERVE, "serve", "--model-repository", str(repo), "--model-control-mode", "explicit",
         "--allowed-path", str(weights)],
        stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
    )
    for _ in range(120):
        if http("GET", "/v2/health/live", timeout=2)[0] == 200:
            return server
        if server.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
        time.sleep(0.5)
    raise RuntimeError("server did not come up")


def client(model: str, out: Path, label: str, *args: str) -> dict[str, Any]:
    summary = out / f"{label}.json"
    command = [SDSERVE, "client", "--model", model, "--no-progress", "--summary-json", str(summary), *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        log(f"  {label}: client exited {done.returncode}: {done.stderr[-500:]}")
    result = json.loads(summary.read_text())
    latency = result["latency_seconds"]
    log(f"  {label}: {result['throughput']:.2f} img/s  p50 {latency['p50']:.2f}  p90 {latency['p90']:.2f}  "
        f"p99 {latency['p99']:.2f}  failed {result['failed']}")
    return result


def run_mode(case_name: str, case: Case, mode: str, model: str, out: Path, quick: bool) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    status, body = http("POST", f"/v2/repository/models/{model}/load")
    if status != 200:
        raise RuntimeError(f"loading {model}: {status} {body}")
    log(f"[{case_name}/{mode}] loaded in {time.perf_counter() - started:.1f} s")
    client(model, out, f"{model}_warmup", "--requests", "2")

    def record(kind: str, label: str, *args: str, **extra: Any) -> None:
        result = client(model, out, label, *args)
        runs.append({"case": case_name, "mode": mode, "kind": kind, **extra, **result})

    for clients, requests in case.closed[: 2 if quick else None]:
        if mode == "none" and clients in case.none_skips:
            continue
        record("closed", f"{model}_c{clients}", "--clients", str(clients), "--requests", str(requests))
    if not quick:
        clients, requests = case.mixed
        record("mixed", f"{model}_mixed", "--clients", str(clients), "--requests", str(requests),
               "--steps", case.mixed_steps, "--seed", "7")
    for rate, requests in case.poisson[: 1 if quick else None]:
        record("poisson", f"{model}_rate{rate:g}", "--request-rate", str(rate), "--requests", str(requests),
               "--seed", "11")
    http("POST", f"/v2/repository/models/{model}/unload")
    # The unload returns before the backend process has exited and freed its GPU memory.
    time.sleep(5)
    return runs


def run_case(case_name: str, out: Path, quick: bool, modes: list[str], compile_unet: bool) -> list[dict[str, Any]]:
    case = CASES[case_name]
    repo = Path(tempfile.mkdtemp(prefix=f"sdserve-load-{case_name}-"))
    weights = case.weights or repo / ".weights" / case_name
    if case.weights is None:
        started = time.perf_counter()
        subprocess.run([sys.executable, str(HERE / "make_model.py"), "--case", case_name, "--out", str(weights)],
                       check=True)
        log(f"[{case_name}] random-weight model written in {time.perf_counter() - started:.1f} s")
    names = {mode: f"{case_name}_{mode}" for mode in MODES}
    write_config(repo, names["none"], case, weights, 1, False, compile_unet)
    write_config(repo, names["request"], case, weights, case.max_batch, False, compile_unet)
    write_config(repo, names["step"], case, weights, case.max_batch, True, compile_unet)
    server = start_server(repo, weights, out / f"server_{case_name}.log")
    runs: list[dict[str, Any]] = []
    try:
        for mode in modes:
            runs += run_mode(case_name, case, mode, names[mode], out, quick)
    finally:
        server.terminate()
        server.wait(timeout=60)
    return runs


MODE_NAMES = {"none": "no batching", "request": "request-level", "step": "step-level"}


def describe(run: dict[str, Any]) -> str:
    if run["kind"] == "closed":
        return f"{run['clients']} clients"
    if run["kind"] == "mixed":
        steps = run["steps"]
        return f"{run['clients']} clients, {steps['min']}-{steps['max']} steps"
    return f"Poisson {run['request_rate']:g}/s"


def write_markdown(results: dict[str, Any], path: Path) -> None:
    engine = "CUDA graphs + torch.compile" if results.get("engine_compile") else "CUDA graphs"
    lines = [f"GPU: {results['gpu']}, {results['date']}, torch {results['torch']}, engine: {engine}", ""]
    for case_name in dict.fromkeys(run["case"] for run in results["runs"]):
        case = CASES[case_name]
        lines += [f"### {case_name}: {case.size}x{case.size}, {case.steps} steps, guidance {case.guidance:g}, "
                  f"max_batch_size {case.max_batch}", "",
                  "| serving | load | images/s | p50 s | p90 s | p99 s | failed |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for run in (r for r in results["runs"] if r["case"] == case_name):
            latency = run["latency_seconds"]
            lines.append(f"| {MODE_NAMES[run['mode']]} | {describe(run)} | {run['throughput']:.2f} | "
                         f"{latency['p50']:.2f} | {latency['p90']:.2f} | {latency['p99']:.2f} | {run['failed']} |")
        lines.append("")
    path.write_text("\n".join(lines))


def write_plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(run["case"] for run in results["runs"]))
    figure, axes = plt.subplots(1, len(cases), figsize=(6.5 * len(cases), 4.5), squeeze=False)
    for axis, case_name in zip(axes[0], cases, strict=True):
        for mode, color in zip(MODES, ("tab:gray", "tab:blue", "tab:red"), strict=True):
            for kind, marker, style in (("closed", "o", "-"), ("poisson", "s", "--")):
                # In the order of the load offered (clients, or arrival rate), not of what was achieved.
                runs = sorted((r for r in results["runs"] if r["case"] == case_name and r["mode"] == mode and r["kind"] == kind),
                              key=lambda r: r["request_rate"] or r["clients"])
                points = [(r["throughput"], r["latency_seconds"]["p99"], r["latency_seconds"]["p50"]) for r in runs]
                if not points:
                    continue
                x = [p[0] for p in points]
                axis.plot(x, [p[1] for p in points], style, marker=marker, color=color,
                          label=f"{MODE_NAMES[mode]}, {'closed loop' if kind == 'closed' else 'Poisson'} (p99)")
                axis.plot(x, [p[2] for p in points], style, marker=marker, color=color, alpha=0.35)
        case = CASES[case_name]
        axis.set_title(f"{case_name} {case.size}² {case.steps} steps — {results['gpu']}")
        axis.set_xlabel("images/s")
        axis.set_ylabel("latency, s (p99 solid; p50 faint)")
        axis.set_yscale("log")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--case", action="append", choices=sorted(CASES))
    parser.add_argument("--quick", action="store_true", help="a few runs per mode, to check the script")
    parser.add_argument("--modes", default=",".join(MODES), help="which of none,request,step to serve")
    parser.add_argument("--compile", action="store_true", help="serve with the engine's torch.compile option")
    parser.add_argument("--from-json", type=Path, help="only redraw the table and plot of an earlier results.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_json is not None:
        write_reports(json.loads(args.from_json.read_text()), args.out)
        return 0
    raw = args.out / "runs"
    raw.mkdir(exist_ok=True)
    import torch

    results: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "engine_compile": args.compile,
        "runs": [],
    }
    for case_name in args.case or ["sd15"]:
        try:
            results["runs"] += run_case(case_name, raw, args.quick, args.modes.split(","), args.compile)
        except Exception as error:  # noqa: BLE001 - keep the other case's figures
            log(f"[{case_name}] FAILED: {error!r}")
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_reports(results, args.out)
    return 0


def write_reports(results: dict[str, Any], out: Path) -> None:
    write_markdown(results, out / "results.md")
    try:
        write_plot(results, out / "latency_vs_throughput.png")
    except ImportError as error:
        log(f"no plot: {error}")
    print((out / "results.md").read_text())


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
