"""Starts a real `bin/sdserve serve` for tests that use Triton's official clients as peers."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
FIXTURE_REPOSITORY = PROJECT_ROOT / "tests" / "fixtures" / "model_repository"

# The start-up lines, in the order the server prints them; the last one means it is serving.
SERVICE_LINES = {
    "grpc": re.compile(r"Started GRPCInferenceService at (\S+)"),
    "http": re.compile(r"Started HTTPService at (\S+)"),
    "metrics": re.compile(r"Started Metrics Service at (\S+)"),
}


@dataclass(frozen=True)
class ServerAddresses:
    """`host:port` of each front end."""

    http: str
    grpc: str
    metrics: str
    pid: int = 0
    """The server process (`node bin/sdserve serve`)."""
    output: list[str] = field(default_factory=list, compare=False, repr=False)
    """The server's output lines so far (its backends' log lines included), growing while it runs."""


def make_repository(root: Path, models: dict[str, Path]) -> Path:
    """A model repository at `root` whose models are symlinks: {name: model folder}."""
    root.mkdir(parents=True, exist_ok=True)
    for name, folder in models.items():
        (root / name).symlink_to(folder)
    return root


@contextmanager
def serving(repository: Path, *extra_args: str, timeout_s: float = 240.0) -> Iterator[ServerAddresses]:
    """Yields the addresses of a server once it prints all of them; stops it afterwards."""
    command = ["node", str(PROJECT_ROOT / "bin" / "sdserve"), "serve", "--model-repository", str(repository),
               "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--http-address", "127.0.0.1",
               *extra_args]
    env = {**os.environ, "SDSERVE_PYTHON": sys.executable}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    addresses: dict[str, str] = {}
    lines: list[str] = []
    started = threading.Event()

    def read_output() -> None:
        # Keeps draining the pipe for the server's whole life so it never blocks on a full pipe.
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            for service, pattern in SERVICE_LINES.items():
                match = pattern.search(line)
                if match and service not in addresses:
                    addresses[service] = match.group(1)
            if len(addresses) == len(SERVICE_LINES):
                started.set()
        started.set()

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    try:
        if not started.wait(timeout_s) or len(addresses) != len(SERVICE_LINES):
            raise RuntimeError("server did not start:\n" + "".join(lines))
        yield ServerAddresses(**addresses, pid=process.pid, output=lines)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serve_tiny_sd_and_add_sub(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[ServerAddresses]:
    """For a module-scoped `server` fixture: a server of the `tiny_sd` and `add_sub` models whose
    repository lies in a fresh temporary folder named after `name`."""
    repository = make_repository(tmp_path_factory.mktemp(name) / "repo", {
        "tiny_sd": PROJECT_ROOT / "model_repository" / "tiny_sd",
        "add_sub": FIXTURE_REPOSITORY / "add_sub",
    })
    with serving(repository) as addresses:
        yield addresses


@contextmanager
def running_server(repository: Path, *extra_args: str, timeout_s: float = 240.0) -> Iterator[str]:
    """Yields the server's HTTP `host:port`; `serving` gives every address."""
    with serving(repository, *extra_args, timeout_s=timeout_s) as addresses:
        yield addresses.http


def http_json(server: ServerAddresses, method: str, path: str, body: object = None) -> tuple[int, object]:
    """A JSON (or raw bytes) request over HTTP: its status and decoded JSON reply, errors included."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(f"http://{server.http}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)
