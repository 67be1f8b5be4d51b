#!/usr/bin/env python3
"""sdserve through its HTTP server, one client at a time: latency, cold build and warm start.

    python3 bench/gpu/serve.py --case sd15 --out DIR [--no-compile]

The random-weight model of bench/load/make_model.py is served with step-level batching and
max_batch_size 4 (the shipped configs' engine options, `engine_compile` on unless --no-compile).
Measured, in order: the first load (the engine's cold build, through the repository API), one
client sending single images, then batches of 4 prompts per request (`--static-batch-size 4`),
an unload, a second load (a new backend process reusing the engine folder: the warm start), and
single images again (the server's defaults, its prompt cache included: the client repeats one
prompt). Writes serve_<case>_<compiled|graphs>.json and the server's log, and prints a table. This is variant (4) of
bench/gpu/run.py's stock / engine table; `--case tiny` checks the script on a CPU in seconds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MODEL = "served"


def load_bench() -> Any:
    # bench/load/run.py shares its file name with bench/gpu/run.py: load it under its own name.
    spec = importlib.util.spec_from_file_location("load_bench", HERE.parent / "load" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def timed_load(bench: Any) -> float:
    started = time.perf_counter()
    status, body = bench.http("POST", f"/v2/repository/models/{MODEL}/load")
    if status != 200:
        raise RuntimeError(f"loading {MODEL}: {status} {body}")
    return time.perf_counter() - started


def latency(bench: Any, out: Path, label: str, requests: int, batch: int) -> dict[str, Any]:
    result = bench.client(MODEL, out, label, "--requests", str(requests), "--static-batch-size", str(batch))
    if result["failed"]:
        raise RuntimeError(f"{label}: {result['failed']} requests failed")
    return {"batch": batch, "requests": requests, "p50_s": result["latency_seconds"]["p50"],
            "mean_s": result["latency_seconds"]["mean"],
            "images_per_s": batch * result["throughput"]}  # the client's throughput counts requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="sd15")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=4, help="single-image requests per measurement")
    parser.add_argument("--no-compile", action="store_true", help="serve the CUDA-graph engine without torch.compile")
    args = parser.parse_args()
    bench = load_bench()
    case = bench.CASES[args.case]
    args.out.mkdir(parents=True, exist_ok=True)
    repo = Path(tempfile.mkdtemp(prefix=f"sdserve-serve-{args.case}-"))
    weights = case.weights or repo / ".weights" / args.case
    if case.weights is None:
        subprocess.run([sys.executable, str(HERE.parent / "load" / "make_model.py"), "--case", args.case,
                        "--out", str(weights)], check=True)
    compile_engine = not args.no_compile
    bench.write_config(repo, MODEL, case, weights, 4, True, compile_engine)
    result: dict[str, Any] = {"case": args.case, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "engine_compile": compile_engine, "size": case.size, "steps": case.steps}
    name = f"{args.case}_{'compiled' if compile_engine else 'graphs'}"
    result_path = args.out / f"serve_{name}.json"

    def save() -> None:  # after every measurement, so a run cut short keeps what it measured
        result_path.write_text(json.dumps(result, indent=2) + "\n")

    server = bench.start_server(repo, args.out / f"server_{name}.log")
    try:
        result["cold_load_s"] = timed_load(bench)
        save()
        bench.log(f"[{name}] cold load (engine build) {result['cold_load_s']:.1f} s")
        bench.client(MODEL, args.out, f"{name}_warmup", "--requests", "1")
        result["batch1"] = latency(bench, args.out, f"{name}_b1", args.requests, 1)
        save()
        result["batch4"] = latency(bench, args.out, f"{name}_b4", max(1, args.requests // 2), 4)
        save()
        status, body = bench.http("POST", f"/v2/repository/models/{MODEL}/unload")
        if status != 200:
            raise RuntimeError(f"unloading: {status} {body}")
        time.sleep(5)  # the unload answers before the backend process has exited
        result["warm_load_s"] = timed_load(bench)
        save()
        bench.log(f"[{name}] warm load (engine reused) {result['warm_load_s']:.1f} s")
        result["batch1_after_warm_start"] = latency(bench, args.out, f"{name}_b1_warm", args.requests, 1)
        engine_json = repo / MODEL / "1" / "engine" / "engine.json"
        if engine_json.is_file():
            recorded = json.loads(engine_json.read_text())
            result["engine"] = {key: recorded.get(key) for key in ("gpu", "torch", "choices", "seconds")}
    finally:
        server.terminate()
        server.wait(timeout=60)
        save()
    rows = [("cold load (engine build) s", result["cold_load_s"]), ("warm load s", result["warm_load_s"]),
            ("1 image, p50 s", result["batch1"]["p50_s"]), ("4 images per request, p50 s", result["batch4"]["p50_s"]),
            ("1 image after the warm start, p50 s", result["batch1_after_warm_start"]["p50_s"])]
    print(f"| {name} through the server | |\n| --- | --- |")
    for label, value in rows:
        print(f"| {label} | {value:.3f} |")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
