"""Starts a real `bin/sdserve serve` for tests that use Triton's official clients as peers."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def running_server(repository: Path, *extra_args: str, timeout_s: float = 240.0) -> Iterator[str]:
    """Yields the server's `host:port` once it prints its HTTP address; stops it afterwards."""
    command = ["node", str(PROJECT_ROOT / "bin" / "sdserve"), "serve", "--model-repository", str(repository),
               "--http-port", "0", "--grpc-port", "0", "--http-address", "127.0.0.1", *extra_args]
    env = {**os.environ, "SDSERVE_PYTHON": sys.executable}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    address: list[str] = []
    lines: list[str] = []
    found = threading.Event()

    def read_output() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            match = re.search(r"Started HTTPService at (\S+)", line)
            if match and not address:
                address.append(match.group(1))
                found.set()
        found.set()

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    try:
        if not found.wait(timeout_s) or not address:
            raise RuntimeError("server did not start:\n" + "".join(lines))
        yield address[0]
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
