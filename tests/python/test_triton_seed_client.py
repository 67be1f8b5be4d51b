"""The seed client (Triton's Stable Diffusion tutorial workload) against a real sdserve."""
from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdserve_server import PROJECT_ROOT, make_repository, running_server

SEED_CLIENT = Path(__file__).with_name("seed_client.py")
NUMBER = r"(\d+(?:\.\d+)?)"


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    repository = make_repository(tmp_path_factory.mktemp("seed") / "repo",
                                 {"tiny_sd": PROJECT_ROOT / "model_repository" / "tiny_sd"})
    with running_server(repository) as http_address:
        yield http_address


@pytest.mark.parametrize("batch_size", [1, 2])
def test_two_clients_report_throughput_and_save_every_image(address: str, tmp_path: Path, batch_size: int) -> None:
    completed = subprocess.run(
        [sys.executable, str(SEED_CLIENT), "--url", address, "--model", "tiny_sd", "--prompt", "a castle on a hill",
         "--clients", "2", "--requests", "2", "--static-batch-size", str(batch_size), "--steps", "1",
         "--save-image", "--output-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    for index, line in enumerate(lines[:2]):
        assert re.fullmatch(rf"Client: {index} Throughput: {NUMBER} Avg\. Latency: {NUMBER}", line), line
    assert re.fullmatch(rf"Throughput: {NUMBER} Total Time: {NUMBER}", lines[2]), lines[2]
    assert len(lines) == 3

    images = sorted(tmp_path.glob("*.jpg"))
    assert len(images) == 2 * 2 * batch_size
    for path in images:
        with Image.open(path) as image:
            assert image.format == "JPEG"
            assert image.size == (128, 128)
            assert image.mode == "RGB"
            assert np.asarray(image).std() > 0


def test_a_client_error_fails_the_run(address: str) -> None:
    completed = subprocess.run(
        [sys.executable, str(SEED_CLIENT), "--url", address, "--model", "missing", "--clients", "2"],
        capture_output=True, text=True, timeout=120)
    assert completed.returncode != 0
    assert "Request for unknown model: 'missing' is not found" in completed.stderr
