#!/usr/bin/env python3
"""Reliability figures: the fuzz suite, then a soak, against a real server on the tiny model (CPU).

    .venv/bin/python bench/reliability/run.py --out bench/reliability/results [--soak-minutes 10]
        [--clients 8] [--kills 2] [--quick]

1. Fuzzing (tests/python/fuzz_http.py, fuzz_grpc.py; the CI suite's budgets): requests generated,
   answers by status, failures (5xx / INTERNAL / UNKNOWN for a client's mistake, answers off the
   OpenAPI document, lost connections), server and backend RSS before and after.
2. Soak (tests/python/soak.py) on a fresh server: `--clients` clients send a mix of valid and
   invalid HTTP and gRPC requests for `--soak-minutes`; the backend is SIGKILLed `--kills` times,
   evenly spaced, and its return to ready is timed; RSS of server and backend every 5 s.

Writes results.json (everything, with the RSS series) and results.md (the figures) into --out.
`--quick` is a one-minute smoke run with small fuzz budgets.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "python"))

from fuzz_grpc import GrpcBudget, run_grpc_fuzz  # noqa: E402
from fuzz_http import Budget, run_http_fuzz  # noqa: E402
from fuzz_support import FUZZ_MODEL, Tally, fuzz_repository, is_alive, sample_memory  # noqa: E402
from sdserve_server import serving  # noqa: E402
from soak import run_soak  # noqa: E402
from test_fuzz import GRPC_BUDGET, HTTP_BUDGET  # noqa: E402

MIB = 2**20


def _mib(value: int) -> float:
    return round(value / MIB, 1)


def run_fuzzers(repository: Path, http_budget: Budget, grpc_budget: GrpcBudget) -> dict[str, Any]:
    with serving(repository, "--model-control-mode", "explicit", "--load-model", FUZZ_MODEL) as server:
        results: dict[str, Any] = {}
        for name, run in (("http", lambda t: run_http_fuzz(f"http://{server.http}", t, http_budget)),
                          ("grpc", lambda t: run_grpc_fuzz(server.grpc, t, grpc_budget))):
            before = sample_memory(server.pid)
            tally = Tally()
            started = time.monotonic()
            run(tally)
            after = sample_memory(server.pid)
            results[name] = {
                **tally.as_dict(), "seconds": round(time.monotonic() - started, 1),
                "failure_details": tally.failures[:20],
                "server_rss_mib": [_mib(before.server), _mib(after.server)],
                "backend_rss_mib": [_mib(before.backends), _mib(after.backends)],
                "backend_restarted": after.backend_pids != before.backend_pids,
            }
        results["server_alive"] = is_alive(server.pid)
        return results


def run_soak_phase(repository: Path, minutes: float, clients: int, kills: int) -> dict[str, Any]:
    duration = minutes * 60
    kill_at = [duration * (i + 1) / (kills + 1) for i in range(kills)]
    with serving(repository, "--model-control-mode", "explicit", "--load-model", FUZZ_MODEL) as server:
        return run_soak(server.http, server.grpc, server.pid, duration, clients, kill_at).as_dict()


def _table(rows: list[tuple[str, Any]]) -> str:
    return "\n".join(["| figure | value |", "| --- | --- |", *[f"| {k} | {v} |" for k, v in rows]])


def summary(results: dict[str, Any]) -> str:
    fuzz, soak = results["fuzz"], results["soak"]
    memory = soak["memory"]
    server_series = [m["server_rss_mib"] for m in memory]
    backend_series = [m["backend_rss_mib"] for m in memory]
    rows = [
        ("fuzz: HTTP requests (schemathesis)", f"{fuzz['http']['requests']} in {fuzz['http']['seconds']} s: {fuzz['http']['by_status']}"),
        ("fuzz: gRPC requests (hypothesis)", f"{fuzz['grpc']['requests']} in {fuzz['grpc']['seconds']} s: {fuzz['grpc']['by_status']}"),
        ("fuzz: failures (5xx/INTERNAL/UNKNOWN for a mistake, off-document answers, lost connections)",
         fuzz["http"]["failures"] + fuzz["grpc"]["failures"]),
        ("fuzz: crashes / backend restarts", f"{0 if fuzz['server_alive'] else 1} / "
         f"{int(fuzz['http']['backend_restarted']) + int(fuzz['grpc']['backend_restarted'])}"),
        ("fuzz: server RSS, MiB (HTTP before→after, gRPC before→after)",
         f"{fuzz['http']['server_rss_mib'][0]}→{fuzz['http']['server_rss_mib'][1]}, {fuzz['grpc']['server_rss_mib'][0]}→{fuzz['grpc']['server_rss_mib'][1]}"),
        ("fuzz: backend RSS, MiB (HTTP before→after, gRPC before→after)",
         f"{fuzz['http']['backend_rss_mib'][0]}→{fuzz['http']['backend_rss_mib'][1]}, {fuzz['grpc']['backend_rss_mib'][0]}→{fuzz['grpc']['backend_rss_mib'][1]}"),
        ("soak: duration, clients", f"{soak['duration_s']} s, {soak['clients']}"),
        ("soak: requests tried", soak["requests"]),
        ("soak: outcomes", ", ".join(f"{k}: {v}" for k, v in sorted(soak["classes"].items()))),
        ("soak: backend kills (SIGKILL) survived, ready again after",
         ", ".join(f"at {k['at_s']} s → {k['ready_again_after_s']} s" for k in soak["backend_kills"])),
        ("soak: server alive at the end", soak["server_alive"]),
        ("soak: server RSS, MiB (first / max / last sample)", f"{server_series[0]} / {max(server_series)} / {server_series[-1]}"),
        ("soak: backend RSS, MiB (first / max / last sample)", f"{backend_series[0]} / {max(backend_series)} / {backend_series[-1]}"),
    ]
    by_kind = "\n".join(f"| {kind} | {', '.join(f'{s}: {n}' for s, n in sorted(statuses.items()))} |"
                        for kind, statuses in soak["by_kind"].items())
    series = "\n".join(f"| {m['t_s']} | {m['server_rss_mib']} | {m['backend_rss_mib']} | {m['backend_pids']} |" for m in memory)
    return (f"# Reliability figures\n\n{results['when']}, {results['machine']}; tiny_sd (16x16, 2 steps by default) on the CPU.\n\n"
            f"{_table(rows)}\n\n## Soak answers by request kind\n\n| kind | answers |\n| --- | --- |\n{by_kind}\n\n"
            f"## Soak memory (RSS, MiB)\n\n| t (s) | server | backend | backend pids |\n| --- | --- | --- | --- |\n{series}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--soak-minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="small fuzz budgets and a one-minute soak")
    args = parser.parse_args()
    http_budget, grpc_budget = (Budget(10, 3), GrpcBudget(10, 10)) if args.quick else (HTTP_BUDGET, GRPC_BUDGET)
    minutes = 1.0 if args.quick else args.soak_minutes

    with tempfile.TemporaryDirectory() as tmp:
        results: dict[str, Any] = {
            "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {platform.system()}, Python {platform.python_version()}",
            "fuzz": run_fuzzers(fuzz_repository(Path(tmp) / "fuzz"), http_budget, grpc_budget),
            "soak": run_soak_phase(fuzz_repository(Path(tmp) / "soak"), minutes, args.clients, args.kills),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "results.md").write_text(summary(results))
    print(summary(results))


if __name__ == "__main__":
    main()
