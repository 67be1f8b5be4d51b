"""What the fuzzers and the soak share: a cheap tiny model to serve, the server's processes and
their memory, and a tally of the answers.

The fuzzed model is the built-in `tiny_sd` with cheaper defaults (16x16 images, 2 steps), so a
request that names no size or steps costs milliseconds; the fuzzers also keep the sizes and steps
they send small (see `cheap_parameters`). Requests with costly but valid sizes are the cost limits'
business, not the fuzzers'.
"""
from __future__ import annotations

import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TINY_SD = PROJECT_ROOT / "model_repository" / "tiny_sd"
FUZZ_MODEL = "tiny_sd"

# Largest values the fuzzers send for the parameters that set a request's cost.
CHEAP_SIDE = 32
CHEAP_STEPS = 2
CHEAP_IMAGES = 2
# Queue timeouts (µs) below this could expire while another request runs: a 504 by design.
SAFE_TIMEOUT_US = 600_000_000

_CHEAP_DEFAULTS = {"image_height": "16", "image_width": "16", "steps": "2"}
# The server's own cost limits (src/core/request-limits.ts), set tight: whatever slips past
# `cheap_parameters` is refused before any backend work.
_COST_LIMITS = {"max_image_pixels": str(64 * 64), "max_request_cost": str(4 * 64 * 64 * 4)}


def fuzz_repository(root: Path) -> Path:
    """A model repository at `root` holding `tiny_sd` with cheap defaults (its weights are the built-in's)."""
    model = root / FUZZ_MODEL
    model.mkdir(parents=True)
    config = (TINY_SD / "config.pbtxt").read_text()
    for key, value in _CHEAP_DEFAULTS.items():
        config, count = re.subn(rf'(key: "{key}"\s*value: {{ string_value: )"[^"]*"', rf'\1"{value}"', config)
        assert count == 1, f"tiny_sd's config.pbtxt has no parameter {key}"
    limits = "".join(f'\nparameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}' for key, value in _COST_LIMITS.items())
    (model / "config.pbtxt").write_text(config + limits + "\n")
    (model / "1").symlink_to(TINY_SD / "1")
    return root


def _is_cheap_side(value: Any) -> bool:
    return not (isinstance(value, int) and not isinstance(value, bool) and CHEAP_SIDE < value <= 4096 and value % 8 == 0)


def cheap_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """`parameters` with valid but costly sizes, steps and batch counts made small, and short queue
    timeouts made long. Invalid values stay as they are: the server must reject them."""
    cheap = dict(parameters)
    for side in ("width", "height"):
        if not _is_cheap_side(cheap.get(side)):
            cheap[side] = CHEAP_SIDE
    steps = cheap.get("steps")
    if isinstance(steps, int) and not isinstance(steps, bool) and CHEAP_STEPS < steps <= 1000:
        cheap["steps"] = CHEAP_STEPS
    preview = cheap.get("preview")
    if isinstance(preview, int) and not isinstance(preview, bool) and preview > CHEAP_STEPS:
        cheap["preview"] = 1
    timeout = cheap.get("timeout")
    if isinstance(timeout, int) and not isinstance(timeout, bool) and 0 <= timeout < SAFE_TIMEOUT_US:
        cheap["timeout"] = SAFE_TIMEOUT_US
    return cheap


# ---------------------------------------------------------------------------------------------
# Processes and memory


def child_pids(pid: int) -> list[int]:
    """The direct children of `pid` (Linux /proc)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return children


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid`, 0 once it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def is_alive(pid: int) -> bool:
    try:
        state = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("State:"))
    except (OSError, StopIteration):
        return False
    return "zombie" not in state


@dataclass(frozen=True)
class MemorySample:
    """RSS of the server and of its backend processes (together), in bytes."""

    server: int
    backends: int
    backend_pids: tuple[int, ...]


def sample_memory(server_pid: int) -> MemorySample:
    backends = tuple(sorted(child_pids(server_pid)))
    return MemorySample(rss_bytes(server_pid), sum(rss_bytes(pid) for pid in backends), backends)


# ---------------------------------------------------------------------------------------------
# Tally


@dataclass
class Tally:
    """Requests sent and how they were answered, by status class; thread-safe."""

    statuses: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, status: str) -> None:
        with self._lock:
            self.statuses[status] += 1

    def fail(self, message: str) -> None:
        with self._lock:
            self.failures.append(message)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "by_status": dict(sorted(self.statuses.items())), "failures": len(self.failures)}


def http_status_class(status: int) -> str:
    return f"{status // 100}xx"
