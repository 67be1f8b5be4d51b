#!/usr/bin/env python3
"""The load targets of one model on one GPU, through the HTTP server, in one run; or its start times.

    PYTHONPATH=python python3 bench/gpu/load_targets.py --out DIR [--case sd15] [--part load|start]
    PYTHONPATH=python python3 bench/gpu/load_targets.py --out DIR --case tiny   # the script on a CPU

`--part load` (the default) serves a step-batched model whose config lists a second size in
`engine_sizes` (SD 1.5: 512² and 768², so graphs exist for both) and measures, in order:
1. offline: the same engine, in a process of its own before the server loads the model (its
   pipeline called directly with B prompts, nothing else on the GPU), images/s at each batch size
   up to max_batch_size and each size; the best is the offline throughput. This process also builds
   the engine, so the server's load reuses it;
2. unloaded: one client, one image per request, one request at a time (p50 latency per size);
3. closed loop: 16 clients, target >= 95 % of the offline throughput;
4. Poisson arrivals at 60 % of the offline throughput: p99 <= 2.5x the unloaded latency;
5. mixed: 512² and 768² as two independent Poisson streams of equal rate (their sum is Poisson:
   the sizes interleave at random) whose load is 50 % of capacity (rate r each with
   r/T512 + r/T768 = 0.5, T the offline throughput of each size): p99 of each <= 3x its unloaded
   latency.
`--part start` serves the model with `engine_compile` on (as the shipped configs) and times the
first load (the cold build), then an unload and a load (the warm start: engine folder reused) in the
backend the server started ahead (`--backend-prestart`, unless `--no-prestart`), then one in a new
backend process after a server restart; it compares the cold and warm engines' images and copies
the backend's timing lines from the server log.
Writes load_targets_<case>.json / start_<case>.json (after every measurement) and a short .md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
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

MODEL = "served"
ENGINES = ".engines"  # the engine cache folder, inside the temporary repository


class Plan:
    """What one case measures: sizes (default first), batches, and the requests per measurement."""

    def __init__(self, sizes: tuple[int, int], max_batch: int, batches: dict[int, tuple[int, ...]], unloaded: int,
                 closed_requests: int, poisson_requests: int, mixed_requests: int) -> None:
        self.sizes, self.max_batch, self.batches = sizes, max_batch, batches
        self.unloaded, self.closed_requests = unloaded, closed_requests
        self.poisson_requests, self.mixed_requests = poisson_requests, mixed_requests


PLANS = {
    "sd15": Plan((512, 768), 16, {512: (4, 8, 16), 768: (8, 16)}, 4, 2, 40, 12),
    "sdxl": Plan((1024, 768), 8, {1024: (4, 8), 768: (8,)}, 3, 1, 24, 10),
    "tiny": Plan((64, 96), 4, {64: (2, 4), 96: (4,)}, 3, 2, 12, 6),
}
CLIENTS = 16


def parameters_for(case: Any, weights: Path, extra_size: int | None, compile_engine: bool) -> dict[str, str]:
    parameters = {"image_height": str(case.size), "image_width": str(case.size), "steps": str(case.steps),
                  "guidance_scale": str(case.guidance), "step_batching": "true",
                  "engine_compile": str(compile_engine).lower(), "weights": str(weights)}
    if extra_size is not None:
        parameters["engine_sizes"] = f"{extra_size}x{extra_size}"
    return parameters


def write_config(bench: Any, repo: Path, case: Any, weights: Path, max_batch: int, parameters: dict[str, str]) -> None:
    bench.write_config(repo, MODEL, case, weights, max_batch, True, parameters["engine_compile"] == "true")
    if "engine_sizes" in parameters:
        config = repo / MODEL / "config.pbtxt"
        weights_line = f'  {{ key: "weights" value: {{ string_value: "{weights}" }} }}'
        text = config.read_text()
        assert weights_line in text, "the template's weights line moved"
        config.write_text(text.replace(weights_line, f'  {{ key: "engine_sizes" value: {{ string_value: '
                                                     f'"{parameters["engine_sizes"]}" }} }},\n{weights_line}'))


# -- offline: the engine's own throughput, in a process of its own ---------------------------


def offline_worker(spec_path: Path) -> int:
    """Runs in a subprocess: load the model as the backend does, then time the pipeline per batch."""
    spec = json.loads(spec_path.read_text())
    started = time.perf_counter()
    import torch

    from sdserve_backend.engine.backend import engine_dir_for, prepare_for_model
    from sdserve_backend.pipelines import GenerationRequest, TextToImagePipeline, load_components
    from sdserve_backend.pipelines.device import choose_placement
    from sdserve_backend.pipelines.text_to_image import GenerationSettings

    imported = time.perf_counter()
    parameters: dict[str, str] = spec["parameters"]
    version_dir = Path(spec["version_dir"])
    placement = choose_placement("GPU", 0)
    components = load_components(Path(parameters["weights"]), placement.device, placement.dtype)
    loaded = time.perf_counter()
    # The server's --engine-cache-dir (Server below): the server's load finds this engine current.
    engine_dir = engine_dir_for(MODEL, "1", version_dir, parameters, version_dir.parent.parent / ENGINES)
    components = prepare_for_model(components, placement, engine_dir, {"max_batch_size": spec["max_batch"]}, parameters,
                                   Path(parameters["weights"]), lambda message: print(message, flush=True))
    built = time.perf_counter()
    pipeline = TextToImagePipeline(components)
    cuda = placement.device.type == "cuda"

    def run(size: int, batch: int) -> float:
        request = GenerationRequest(prompts=[spec["prompt"]] * batch, seed=1)
        settings = GenerationSettings(height=size, width=size, steps=int(parameters["steps"]),
                                      guidance_scale=float(parameters["guidance_scale"]))
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        pipeline([request], settings)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    result: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if cuda else "cpu",
                              "seconds": {"imports": imported - started, "weights": loaded - imported,
                                          "engine": built - loaded}, "sizes": {}}
    for size_text, batches in spec["batches"].items():
        size = int(size_text)
        run(size, 2)  # first use of this size: allocator and prompt cache
        per_batch = {}
        for batch in batches:
            times = [run(size, batch) for _ in range(spec["repeats"])]
            per_batch[str(batch)] = {"seconds": statistics.median(times), "images_per_s": batch / statistics.median(times)}
            print(f"offline {size}² batch {batch}: {per_batch[str(batch)]['images_per_s']:.3f} img/s", flush=True)
        best = max(per_batch, key=lambda b: per_batch[b]["images_per_s"])
        result["sizes"][size_text] = {"batches": per_batch, "best_batch": int(best),
                                      "images_per_s": per_batch[best]["images_per_s"]}
    Path(spec["out"]).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def offline(out: Path, version_dir: Path, parameters: dict[str, str], plan: Plan, repeats: int) -> dict[str, Any]:
    spec = {"parameters": parameters, "version_dir": str(version_dir), "max_batch": plan.max_batch, "prompt": PROMPT,
            "batches": {str(size): list(batches) for size, batches in plan.batches.items()}, "repeats": repeats,
            "out": str(out / "offline.json")}
    spec_path = out / "offline_spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "python"), os.environ.get("PYTHONPATH")]))}
    with (out / "offline.log").open("wb") as log_file:
        done = subprocess.run([sys.executable, __file__, "--offline-worker", str(spec_path)], env=env, stdout=log_file,
                              stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"the offline run failed: {(out / 'offline.log').read_text()[-3000:]}")
    return json.loads((out / "offline.json").read_text())


# -- the server and its clients ---------------------------------------------------------------

PROMPT = "a photograph of an astronaut riding a horse"


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


class Server:
    def __init__(self, bench: Any, repo: Path, weights: Path, log_path: Path, env: dict[str, str] | None = None,
                 flags: tuple[str, ...] = ()) -> None:
        http_port, grpc_port, metrics_port = free_ports(3)
        self.bench, self.log_path = bench, log_path
        self.address = f"127.0.0.1:{http_port}"
        bench.URL = f"http://{self.address}"
        self.process = subprocess.Popen(
            [bench.SDSERVE, "serve", "--model-repository", str(repo), "--model-control-mode", "explicit",
             "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port),
             "--allowed-path", str(weights), "--engine-cache-dir", str(repo / ENGINES), *flags],
            stdout=log_path.open("ab"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        for _ in range(240):
            if bench.http("GET", "/v2/health/live", timeout=2)[0] == 200:
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        raise RuntimeError("server did not come up")

    def load(self) -> float:
        started = time.perf_counter()
        status, body = self.bench.http("POST", f"/v2/repository/models/{MODEL}/load")
        if status != 200:
            raise RuntimeError(f"loading: {status} {body}")
        return time.perf_counter() - started

    def wait_for_spare(self, timeout_s: float = 180) -> float:
        """Seconds until every spare backend started so far (`--backend-prestart`) has its imports done."""
        started = time.perf_counter()
        while time.perf_counter() - started < timeout_s:
            text = self.log_path.read_text(errors="replace")
            begun, ready = len(re.findall(r"started ahead of its load", text)), len(re.findall(r"\] .*pre-imported ", text))
            if begun and ready >= begun:
                return time.perf_counter() - started
            time.sleep(0.5)
        raise RuntimeError("the spare backend did not finish its imports")

    def unload(self) -> None:
        status, body = self.bench.http("POST", f"/v2/repository/models/{MODEL}/unload")
        if status != 200:
            raise RuntimeError(f"unloading: {status} {body}")
        # The unload answers before the backend process has exited and freed its GPU memory.
        time.sleep(5)

    def client(self, out: Path, label: str, *args: str) -> dict[str, Any]:
        summary = out / "runs" / f"{label}.json"
        summary.parent.mkdir(exist_ok=True)
        command = [self.bench.SDSERVE, "client", "--model", MODEL, "--url", self.address, "--no-progress",
                   "--prompt", PROMPT, "--summary-json", str(summary), *args]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0 or not summary.is_file():
            raise RuntimeError(f"{label}: client exited {done.returncode}: {done.stderr[-1000:]}")
        return _brief(label, json.loads(summary.read_text()))

    def clients_together(self, out: Path, runs: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
        results: dict[str, dict[str, Any]] = {}
        errors: list[BaseException] = []

        def one(label: str, args: list[str]) -> None:
            try:
                results[label] = self.client(out, label, *args)
            except BaseException as error:  # noqa: BLE001 - reported after the join
                errors.append(error)

        threads = [threading.Thread(target=one, args=(label, args)) for label, args in runs.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return results

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _brief(label: str, summary: dict[str, Any]) -> dict[str, Any]:
    latency = summary["latency_seconds"]
    brief = {"requests": summary["requests"], "failed": summary["failed"], "elapsed_s": summary["elapsed_seconds"],
             "requests_per_s": summary["throughput"], "p50_s": latency["p50"], "p90_s": latency["p90"],
             "p99_s": latency["p99"], "mean_s": latency["mean"]}
    log(f"  {label}: {brief['requests_per_s']:.3f} req/s  p50 {brief['p50_s']:.3f} s  p99 {brief['p99_s']:.3f} s  "
        f"failed {brief['failed']}")
    if summary["failed"]:
        raise RuntimeError(f"{label}: {summary['failed']} requests failed")
    return brief


# -- the two parts ------------------------------------------------------------------------------


def part_load(bench: Any, case_name: str, out: Path, repo: Path, weights: Path, result: dict[str, Any], save: Any,
              compile_engine: bool) -> None:
    case, plan = bench.CASES[case_name], PLANS[case_name]
    default, extra = plan.sizes
    parameters = parameters_for(case, weights, extra, compile_engine)
    write_config(bench, repo, case, weights, plan.max_batch, parameters)
    result.update({"max_batch_size": plan.max_batch, "sizes": list(plan.sizes), "engine_compile": compile_engine})

    # 1. offline (builds the engine the server then reuses)
    log("offline: the engine's own throughput")
    result["offline"] = offline(out, repo / MODEL / "1", parameters, plan, repeats=1)
    save()
    best = {size: result["offline"]["sizes"][str(size)]["images_per_s"] for size in plan.sizes}
    log(f"offline best: {best}")

    server = Server(bench, repo, weights, out / f"server_load_{case_name}.log")
    try:
        result["load_s"] = server.load()
        log(f"loaded in {result['load_s']:.1f} s")
        for size in plan.sizes:
            server.client(out, f"warmup_{size}", "--requests", "2", "--height", str(size), "--width", str(size))
        # 2. unloaded latency, per size
        result["unloaded"] = {str(size): server.client(out, f"unloaded_{size}", "--requests", str(plan.unloaded),
                                                       "--height", str(size), "--width", str(size))
                              for size in plan.sizes}
        save()
        unloaded = {size: result["unloaded"][str(size)]["p50_s"] for size in plan.sizes}
        # 3. closed loop
        closed = server.client(out, f"closed_c{CLIENTS}", "--clients", str(CLIENTS), "--requests", str(plan.closed_requests))
        result["closed"] = {**closed, "images_per_s": closed["requests_per_s"],
                            "fraction_of_offline": closed["requests_per_s"] / best[default], "target": 0.95}
        save()
        # 4. Poisson at 60 % of offline
        rate = 0.6 * best[default]
        poisson = server.client(out, "poisson_60", "--request-rate", f"{rate:.4f}", "--requests",
                                str(plan.poisson_requests), "--seed", "11")
        result["poisson"] = {**poisson, "rate_per_s": rate, "p99_over_unloaded": poisson["p99_s"] / unloaded[default],
                             "target": 2.5}
        save()
        # 5. mixed sizes at 50 % of capacity, as two Poisson streams of one rate
        mixed_rate = 0.5 / sum(1.0 / best[size] for size in plan.sizes)
        streams = server.clients_together(out, {
            f"mixed_{size}": ["--request-rate", f"{mixed_rate:.4f}", "--requests", str(plan.mixed_requests),
                              "--height", str(size), "--width", str(size), "--seed", str(20 + index)]
            for index, size in enumerate(plan.sizes)})
        result["mixed"] = {"rate_per_s_each": mixed_rate, "target": 3.0, "sizes": {
            str(size): {**streams[f"mixed_{size}"], "p99_over_unloaded": streams[f"mixed_{size}"]["p99_s"] / unloaded[size]}
            for size in plan.sizes}}
        save()
        result["engine_log"] = _engine_lines(out / f"server_load_{case_name}.log")
    finally:
        server.stop()


def part_start(bench: Any, case_name: str, out: Path, repo: Path, weights: Path, result: dict[str, Any], save: Any,
               compile_engine: bool, budget_s: float, prestart: bool) -> None:
    """Cold build, then the warm start (engine folder reused) in a backend started ahead of the load
    (`--backend-prestart`: the server's spare, its imports done) and, budget allowing, in a new
    backend process that imports everything itself. The images of the cold and the warm engine
    (same seeds) are compared byte for byte."""
    case = bench.CASES[case_name]
    parameters = parameters_for(case, weights, None, compile_engine)
    write_config(bench, repo, case, weights, 4, parameters)
    result.update({"max_batch_size": 4, "engine_compile": compile_engine, "prestart": prestart, "warm_loads": []})
    log_path = out / f"server_start_{case_name}.log"
    server = Server(bench, repo, weights, log_path, flags=("--backend-prestart",) if prestart else ())
    image_args = ("--requests", "2", "--seed", "7", "--save-image")
    try:
        result["cold_load_s"] = server.load()
        save()
        log(f"cold load (engine build) {result['cold_load_s']:.1f} s")
        server.client(out, "start_cold_image", *image_args, "--output-dir", str(out / "images" / "cold"))
        server.unload()
        if prestart:
            result["spare_wait_s"] = server.wait_for_spare()
            log(f"spare backend ready after {result['spare_wait_s']:.1f} s more")
        result["warm_loads"].append({"spare": prestart, "seconds": server.load()})
        save()
        log(f"warm load (engine reused{', spare backend' if prestart else ''}) {result['warm_loads'][-1]['seconds']:.1f} s")
        result["after_warm"] = server.client(out, "start_warm_image", *image_args, "--output-dir", str(out / "images" / "warm"))
        result["images"] = compare_images(out / "images" / "cold", out / "images" / "warm")
        log(f"images cold vs warm: {result['images']}")
        save()
        # The same warm start in a new backend process that does its own imports
        if prestart and time.perf_counter() - STARTED + 1.5 * result["warm_loads"][-1]["seconds"] + 30 < budget_s:
            server.unload()
            server.stop()
            server = Server(bench, repo, weights, log_path)
            result["warm_loads"].append({"spare": False, "seconds": server.load()})
            save()
            log(f"warm load in a new backend process {result['warm_loads'][-1]['seconds']:.1f} s")
    finally:
        server.stop()
        result["engine_log"] = _engine_lines(log_path)


def compare_images(first: Path, second: Path) -> dict[str, Any]:
    """Byte-identical saved images, or the PSNR of each pair that differs (JPEG, so a bound only)."""
    pairs = [(path, second / path.name) for path in sorted(first.glob("*.jpg"))]
    if not pairs or not all(other.is_file() for _, other in pairs):
        return {"compared": 0}
    identical = sum(path.read_bytes() == other.read_bytes() for path, other in pairs)
    result: dict[str, Any] = {"compared": len(pairs), "identical": identical}
    if identical < len(pairs):
        import numpy as np
        from PIL import Image

        psnr = []
        for path, other in pairs:
            a = np.asarray(Image.open(path), dtype=np.float64)
            b = np.asarray(Image.open(other), dtype=np.float64)
            mse = float(np.mean((a - b) ** 2))
            psnr.append(float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse))
        result["psnr_db"] = psnr
    return result


TIMING_LINE = re.compile(r"engine:|imported|loading .* \(pid|loaded .* \(.*weights|started ahead|becomes ")


def _engine_lines(log_path: Path) -> list[str]:
    """The backend's timing lines from the server log (imports, weights, engine stages)."""
    return [line.strip()[:400] for line in log_path.read_text(errors="replace").splitlines() if TIMING_LINE.search(line)]


def write_markdown(result: dict[str, Any], path: Path) -> None:
    lines = [f"# {result['case']}: {result.get('gpu', '?')}, {result['date']}, torch {result.get('torch', '?')}", ""]
    if "offline" in result:
        sizes = result["sizes"]
        lines += [f"engine_compile {str(result['engine_compile']).lower()}, max_batch_size {result['max_batch_size']}, "
                  f"sizes {' and '.join(f'{s}²' for s in sizes)}", "",
                  "| measure | figure | target | met |", "| --- | --- | --- | --- |"]
        for size in sizes:
            entry = result["offline"]["sizes"][str(size)]
            lines.append(f"| offline {size}², best batch {entry['best_batch']} | {entry['images_per_s']:.3f} img/s | – | – |")
        for size in sizes:
            if "unloaded" in result:
                lines.append(f"| unloaded 1 image {size}², p50 | {result['unloaded'][str(size)]['p50_s']:.3f} s | – | – |")
        if "closed" in result:
            closed = result["closed"]
            lines.append(f"| {CLIENTS} closed-loop clients | {closed['images_per_s']:.3f} img/s = "
                         f"{100 * closed['fraction_of_offline']:.1f} % of offline (p99 {closed['p99_s']:.2f} s) | ≥ 95 % | "
                         f"{'yes' if closed['fraction_of_offline'] >= 0.95 else 'no'} |")
        if "poisson" in result:
            poisson = result["poisson"]
            lines.append(f"| Poisson {poisson['rate_per_s']:.3f}/s (60 %), {poisson['requests']} requests | p99 "
                         f"{poisson['p99_s']:.3f} s = {poisson['p99_over_unloaded']:.2f}× unloaded | ≤ 2.5× | "
                         f"{'yes' if poisson['p99_over_unloaded'] <= 2.5 else 'no'} |")
        if "mixed" in result:
            for size, entry in result["mixed"]["sizes"].items():
                lines.append(f"| mixed, {size}² at {result['mixed']['rate_per_s_each']:.3f}/s ({entry['requests']} requests) | "
                             f"p99 {entry['p99_s']:.3f} s = {entry['p99_over_unloaded']:.2f}× unloaded | ≤ 3× | "
                             f"{'yes' if entry['p99_over_unloaded'] <= 3 else 'no'} |")
    if "cold_load_s" in result:
        lines += ["", "| start | seconds |", "| --- | --- |", f"| cold load (engine build) | {result['cold_load_s']:.1f} |"]
        lines += [f"| warm load, {'backend started ahead (spare)' if load['spare'] else 'new backend process'} | "
                  f"{load['seconds']:.1f} |" for load in result.get("warm_loads", [])]
        if "spare_wait_s" in result:
            lines.append(f"| (waited for the spare's imports after the unload) | {result['spare_wait_s']:.1f} |")
        if "images" in result:
            lines += ["", f"Images of the cold and the warm engine, same seeds: {result['images']}"]
    if result.get("engine_log"):
        lines += ["", "Backend timing lines:", "", *(f"    {line}" for line in result["engine_log"][-30:])]
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--offline-worker":
        return offline_worker(Path(sys.argv[2]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--case", default="sd15", choices=sorted(PLANS))
    parser.add_argument("--part", default="load", choices=("load", "start"))
    parser.add_argument("--compile", action="store_true", help="--part load: serve with engine_compile on")
    parser.add_argument("--no-compile", action="store_true", help="--part start: engine_compile off")
    parser.add_argument("--no-prestart", action="store_true", help="--part start: no backend started ahead")
    parser.add_argument("--budget-s", type=float, default=400, help="--part start: skip the second warm load past this")
    parser.add_argument("--weights", type=Path, help="reuse a random-weight model written earlier")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    bench = load_bench()
    case = bench.CASES[args.case]
    repo = Path(tempfile.mkdtemp(prefix=f"sdserve-targets-{args.case}-"))
    weights = (args.weights or case.weights or repo / ".weights" / args.case).resolve()
    if not weights.is_dir():
        started = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "bench" / "load" / "make_model.py"), "--case", args.case,
                        "--out", str(weights)], check=True)
        log(f"random-weight model written in {time.perf_counter() - started:.1f} s")
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        torch_version = torch.__version__
    except ImportError:
        gpu, torch_version = "?", "?"
    result: dict[str, Any] = {"case": args.case, "part": args.part, "gpu": gpu, "torch": torch_version,
                              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "size": case.size, "steps": case.steps, "guidance": case.guidance}
    name = f"{'load_targets' if args.part == 'load' else 'start'}_{args.case}"

    def save() -> None:  # after every measurement: a run cut short keeps what it measured
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        write_markdown(result, args.out / f"{name}.md")

    try:
        if args.part == "load":
            part_load(bench, args.case, args.out, repo, weights, result, save, args.compile)
        else:
            part_start(bench, args.case, args.out, repo, weights, result, save, not args.no_compile, args.budget_s,
                       not args.no_prestart)
    finally:
        save()
    print((args.out / f"{name}.md").read_text())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
