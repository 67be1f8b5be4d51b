#!/usr/bin/env python3
"""Replicas behind a real load balancer: three sdserve replicas on the tiny model (CPU) behind Envoy
running deploy/envoy/envoy.yaml; 64 clients send 1,000 requests; once 10 % are answered replica a
is SIGTERMed (restarted when it has exited), once 30 % are answered replica b is SIGKILLed
(restarted at once). The scenario is tests/python/replicas_envoy.py's, as in CI with more requests.

    .venv/bin/python bench/deploy/run.py --out bench/deploy/results [--clients 64] [--requests 1000]

Writes results.json (the summary, every failure with its access-log record, Envoy's health changes)
and results.md (the figures) into --out.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "python"))

from replicas_envoy import ScenarioResult, run_scenario  # noqa: E402


def _since(later: float | None, earlier: float | None) -> str:
    return "–" if later is None or earlier is None else f"{later - earlier:.2f} s"


def report(result: ScenarioResult, machine: dict[str, Any]) -> str:
    summary = result.summary()
    term, kill = result.events
    after = summary["after_recovery"]
    rows = [
        ("clients / requests", f"{summary['clients']} / {summary['requests']}"),
        ("answered (an HTTP response)", summary["answered"]),
        ("200", summary["ok"]),
        ("failed", f"{summary['failed']} ({', '.join(f'{n} × {s}' for s, n in summary['failed_by_status'].items()) or 'none'})"),
        ("failed that were not in flight on the SIGKILLed replica", summary["failed_not_in_flight_on_the_killed_replica"]),
        ("retried by Envoy (all before any replica processed them) / of which 200", f"{summary['retried_by_envoy']} / {summary['retried_and_ok']}"),
        ("served by replica a / b / c", " / ".join(str(v) for v in summary["served_by_replica"].values())),
        ("run time, images/s", f"{summary['seconds']} s, {summary['images_per_second']}"),
        ("latency p50 / p99", f"{summary['latency_p50_s']} s / {summary['latency_p99_s']} s"),
        ("a: SIGTERM at, requests in flight", f"{term.at:.2f} s, {term.in_flight}"),
        ("a: out of Envoy's rotation after SIGTERM", _since(term.unhealthy_at, term.at)),
        ("a: drained and exited (exit code) after SIGTERM", f"{_since(term.exited_at, term.at)} ({term.exit_code})"),
        ("a: back in rotation after its restart", _since(term.healthy_at, term.restarted_at)),
        ("b: SIGKILL at, requests in flight", f"{kill.at:.2f} s, {kill.in_flight}"),
        ("b: out of Envoy's rotation after SIGKILL", _since(kill.unhealthy_at, kill.at)),
        ("b: back in rotation after its restart", _since(kill.healthy_at, kill.restarted_at)),
        ("after recovery: requests, 200, served by a / b / c",
         f"{after['requests']}, {after['ok']}, {' / '.join(str(v) for v in after['served_by_replica'].values())}"),
    ]
    counters = ", ".join(f"{name} {value}" for name, value in sorted(summary["envoy_counters"].items()))
    lines = [
        f"Run {machine['date']} on {machine['cpus']} CPU cores ({machine['processor']}), load average "
        f"{machine['load_before']} before the run (the host is shared), {machine['python']}, Envoy 1.40.0.",
        "",
        "| figure | value |",
        "| --- | --- |",
        *[f"| {name} | {value} |" for name, value in rows],
        "",
        f"Envoy's cluster counters: {counters}.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    machine = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "load_before": " ".join(f"{value:.1f}" for value in os.getloadavg()),
        "python": f"Python {platform.python_version()}",
    }
    with tempfile.TemporaryDirectory(prefix="sdserve-deploy-bench-") as work:
        result = run_scenario(Path(work), args.clients, args.requests, log=lambda line: print(line, flush=True))
    outside = [f for f in result.failures() if not result.in_flight_when_killed(f)]
    machine["load_after"] = " ".join(f"{value:.1f}" for value in os.getloadavg())
    summary = result.summary()
    failures = [{**vars(f), "access_log": result.access.get(f"load-{f.index}")} for f in result.failures()]
    (args.out / "results.json").write_text(json.dumps(
        {"machine": machine, "summary": summary, "failures": failures, "health_changes": result.health_changes}, indent=1) + "\n")
    (args.out / "results.md").write_text(report(result, machine))
    print((args.out / "results.md").read_text())
    return 0 if not outside and summary["answered"] == args.requests else 1


if __name__ == "__main__":
    sys.exit(main())
