"""What the benchmark scripts built on bench/load/run.py share: a log line stamped with the seconds
since the script started, and bench/load/run.py itself as a module (its Case table, config
template, server start and client runner)."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

STARTED = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.1f} s] {message}", flush=True)


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("load_bench", Path(__file__).resolve().parent / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
