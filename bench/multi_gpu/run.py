#!/usr/bin/env python3
"""Throughput with two GPUs against one, in one run on one host: 16 closed-loop clients.

    python3 bench/multi_gpu/run.py --out DIR [--cases sd15,sdxl] [--budget-s 380]

For each case a full-size random-weight model (bench/load/make_model.py; nothing downloaded) is
served twice from one repository by one server: `<case>_1gpu` with `instance_group [{ kind:
KIND_GPU, count: 1, gpus: [0] }]` and `<case>_2gpu` with `gpus: [0, 1]` (one backend process per
GPU, pinned by CUDA_VISIBLE_DEVICES), both with step-level batching, the same max_batch_size and
`engine_compile` off (CUDA graphs only, to keep the engine build short). Both are loaded, warmed up
with one request per client, then measured one after the other with `sdserve client --clients 16`.
The weights of every case are generated at the start, each case on its own GPU, in parallel. A
case that cannot finish within --budget-s seconds of the start is skipped and said so. Writes
results.json (after each case) and results.md into --out, and the server's log.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "bench" / "load"))

from script import STARTED, load_bench, log  # noqa: E402  (bench/load/script.py)

CLIENTS = 16
# (max_batch_size, requests per client, seconds the case needs once its weights exist)
PLAN = {"sd15": (16, 2, 110), "sdxl": (8, 1, 170), "tiny": (4, 1, 60)}


def make_weights(case: str, out: Path, gpu: int, log_dir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu), "PYTHONPATH": str(ROOT / "python")}
    return subprocess.Popen([sys.executable, str(ROOT / "bench" / "load" / "make_model.py"), "--case", case, "--out", str(out)],
                            env=env, stdout=(log_dir / f"make_{case}.log").open("wb"), stderr=subprocess.STDOUT)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def write_models(bench: Any, repo: Path, case_name: str, weights: Path, max_batch: int) -> list[str]:
    names = []
    for gpus in ("0", "0, 1"):
        name = f"{case_name}_{len(gpus.split(','))}gpu"
        bench.write_config(repo, name, bench.CASES[case_name], weights, max_batch, True, False)
        config = repo / name / "config.pbtxt"
        config.write_text(config.read_text().replace(
            "instance_group [ { count: 1 kind: KIND_GPU } ]", f"instance_group [ {{ count: 1 kind: KIND_GPU gpus: [ {gpus} ] }} ]"))
        names.append(name)
    return names


def load_all(bench: Any, names: list[str]) -> dict[str, float]:
    seconds: dict[str, float] = {}

    def load(name: str) -> None:
        started = time.perf_counter()
        status, body = bench.http("POST", f"/v2/repository/models/{name}/load")
        if status != 200:
            log(f"loading {name}: {status} {body}")
            return
        seconds[name] = round(time.perf_counter() - started, 1)

    threads = [threading.Thread(target=load, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if len(seconds) != len(names):
        raise RuntimeError(f"not every model loaded: {seconds}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", default="sd15,sdxl")
    parser.add_argument("--budget-s", type=float, default=380)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    bench = load_bench()
    cases = [case for case in args.cases.split(",") if case]
    repo = Path(tempfile.mkdtemp(prefix="sdserve-multi-gpu-"))

    # 1. weights of every case at once, one GPU each
    weights = {case: bench.CASES[case].weights or repo / ".weights" / case for case in cases}
    makers = {case: make_weights(case, weights[case], gpu % 2, args.out) for gpu, case in enumerate(cases) if bench.CASES[case].weights is None}
    ports = free_ports(3)
    bench.URL = f"http://127.0.0.1:{ports[0]}"  # the repository calls go here
    url = ("--url", f"127.0.0.1:{ports[0]}")
    server = subprocess.Popen(
        [bench.SDSERVE, "serve", "--model-repository", str(repo), "--model-control-mode", "explicit",
         "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]),
         "--engine-cache-dir", str(repo / ".engines"), *[arg for case in cases for arg in ("--allowed-path", str(weights[case]))]],
        stdout=(args.out / "server.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        gpu_names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True).stdout.split("\n")
    except FileNotFoundError:
        gpu_names = ["no GPU"]
    results: dict[str, Any] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "gpus": [g for g in gpu_names if g],
                               "clients": CLIENTS, "engine_compile": False, "cases": {}, "skipped": {}}
    try:
        for _ in range(240):
            if bench.http("GET", "/v2/health/live", timeout=2)[0] == 200:
                break
            time.sleep(0.5)
        for case_name in cases:
            max_batch, requests, needs_s = PLAN[case_name]
            if case_name in makers and makers[case_name].wait() != 0:
                raise RuntimeError(f"making {case_name} weights failed: see make_{case_name}.log")
            elapsed = time.perf_counter() - STARTED
            if elapsed + needs_s > args.budget_s:
                results["skipped"][case_name] = f"{elapsed:.0f} s in, needs ~{needs_s} s more: over the {args.budget_s:.0f} s budget"
                log(f"{case_name}: skipped ({results['skipped'][case_name]})")
                continue
            case = bench.CASES[case_name]
            names = write_models(bench, repo, case_name, weights[case_name], max_batch)
            # 2. both models loaded (GPU 0 holds one process of each), warmed up, then measured in turn
            load_seconds = load_all(bench, names)
            log(f"{case_name}: loaded {load_seconds}")
            for maker in makers.values():  # no weights are being written on a GPU while measuring
                maker.wait()
            for name in names:
                bench.client(name, args.out, f"{name}_warmup", *url, "--clients", str(CLIENTS), "--requests", "1")
            measured = {}
            for name in names:
                result = bench.client(name, args.out, f"{name}_c{CLIENTS}", *url, "--clients", str(CLIENTS), "--requests", str(requests))
                measured[name] = {"images_per_s": round(result["throughput"], 3), "failed": result["failed"],
                                  "p50_s": result["latency_seconds"]["p50"], "p99_s": result["latency_seconds"]["p99"],
                                  "requests": CLIENTS * requests}
            one, two = (measured[name]["images_per_s"] for name in names)
            results["cases"][case_name] = {"size": case.size, "steps": case.steps, "guidance": case.guidance,
                                           "max_batch_size": max_batch, "load_s": load_seconds, "one_gpu": measured[names[0]],
                                           "two_gpus": measured[names[1]], "speedup": round(two / one, 3)}
            log(f"{case_name}: 1 GPU {one:.2f} img/s, 2 GPUs {two:.2f} img/s: {two / one:.2f}x")
            (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
            for name in names:
                bench.http("POST", f"/v2/repository/models/{name}/unload")
    finally:
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        server.terminate()
        for maker in makers.values():
            maker.kill()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    lines = [f"# 2 GPUs against 1, {CLIENTS} closed-loop clients ({', '.join(results['gpus'])}, {results['date']})", "",
             "| model | size, steps | max_batch_size | 1 GPU img/s | 2 GPUs img/s | speedup | failed |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, case in results["cases"].items():
        lines.append(f"| {name} | {case['size']}², {case['steps']} | {case['max_batch_size']} | {case['one_gpu']['images_per_s']:.2f} | "
                     f"{case['two_gpus']['images_per_s']:.2f} | **{case['speedup']:.2f}×** | "
                     f"{case['one_gpu']['failed'] + case['two_gpus']['failed']} |")
    for name, why in results["skipped"].items():
        lines.append(f"\n{name} skipped: {why}")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
