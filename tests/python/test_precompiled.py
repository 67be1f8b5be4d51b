"""The engine's precompiled forwards (`engine/precompiled.py`) on the CPU: a forward compiled ahead
of time is saved in the engine folder and loaded by the next start instead of being traced again;
a changed key, a damaged or unloadable artifact is compiled again with a log line, never a failed
load; a forward with a graph break runs through torch.compile, and later starts know it.

The GPU engine compiles with Inductor; here the backend is `aot_eager` (the same Dynamo capture,
serialization and loading, without a C++ compile per test)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from sdserve_backend.engine.precompiled import PrecompiledForward, input_signature, prune

BACKEND = "aot_eager"
KEY = {"torch": torch.__version__, "gpu": "cpu", "config_hash": "c1", "weights_hash": "w1"}


class TinyBlock(torch.nn.Module):
    """A convolution, attention over the pixels and a projection: rows stay independent."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(4, 8, 3, padding=1)
        self.proj = torch.nn.Linear(8, 4)

    def forward(self, sample: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        hidden = F.silu(self.conv(sample))
        tokens = hidden.flatten(2).transpose(1, 2)
        attended = F.scaled_dot_product_attention(tokens, tokens, tokens)
        return self.proj(attended).transpose(1, 2).reshape(sample.shape) * scale[:, None, None, None]


def block_forward(block: TinyBlock, sample: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return block(sample, scale)


def breaking_forward(block: TinyBlock, sample: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    hidden = block(sample, scale)
    torch._dynamo.graph_break()
    return hidden + 1


def inputs(rows: int, dynamic: bool) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(rows)
    sample, scale = torch.randn((rows, 4, 6, 6), generator=generator), torch.rand((rows,), generator=generator)
    if dynamic:
        torch._dynamo.mark_dynamic(sample, 0)
        torch._dynamo.mark_dynamic(scale, 0)
    return sample, scale


def forward_in(folder: Path, lines: list[str], key: dict[str, Any] | None = None,
               function: Any = block_forward) -> PrecompiledForward:
    """A new forward, as a new process would build it (Dynamo's in-memory state reset)."""
    torch._dynamo.reset()
    return PrecompiledForward("block", function, folder, key or KEY, lines.append, backend=BACKEND)


def check_rows(forward: PrecompiledForward, block: TinyBlock, rows: tuple[int, ...] = (4, 2, 3)) -> None:
    with torch.inference_mode():
        for count in rows:
            sample, scale = inputs(count, dynamic=count >= 2)
            torch.testing.assert_close(forward(block, sample, scale), block(sample, scale))


@pytest.fixture(scope="module")
def block() -> TinyBlock:
    return TinyBlock().eval()


def test_a_forward_is_compiled_once_then_loaded_by_the_next_start(block: TinyBlock, tmp_path: Path) -> None:
    """The build compiles one artifact for a row count left symbolic (2 and up) and one for a
    single row; the next start loads both, and they compute what the model does."""
    lines: list[str] = []
    first = forward_in(tmp_path, lines)
    check_rows(first, block, (4, 2, 3, 1))
    assert sorted(first.sources.values()) == ["compiled", "compiled"]
    assert len(list(tmp_path.glob("block-*.bin"))) == 2
    described = [json.loads(path.read_text()) for path in tmp_path.glob("block-*.json")]
    assert sorted(entry["signature"] for entry in described) == [
        "float32[*x4x6x6]cpu;float32[*]cpu", "float32[1x4x6x6]cpu;float32[1]cpu"]

    lines.clear()
    again = forward_in(tmp_path, lines)
    check_rows(again, block, (3, 1, 4, 2))
    assert sorted(again.sources.values()) == ["loaded", "loaded"]
    assert all("loaded precompiled block" in line for line in lines), lines


def test_a_changed_key_compiles_a_new_artifact(block: TinyBlock, tmp_path: Path) -> None:
    """Another torch, GPU, model config or set of weights is another artifact: the old one is not used."""
    check_rows(forward_in(tmp_path, []), block, (2,))
    lines: list[str] = []
    changed = forward_in(tmp_path, lines, {**KEY, "weights_hash": "w2"})
    check_rows(changed, block, (2,))
    assert list(changed.sources.values()) == ["compiled"]
    assert any("missing; compiling it ahead of time" in line for line in lines), lines
    assert len(list(tmp_path.glob("block-*.bin"))) == 2


def test_a_damaged_artifact_is_compiled_again_with_a_log_line(block: TinyBlock, tmp_path: Path) -> None:
    check_rows(forward_in(tmp_path, []), block, (2,))
    (artifact,) = tmp_path.glob("block-*.bin")
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))

    lines: list[str] = []
    rebuilt = forward_in(tmp_path, lines)
    check_rows(rebuilt, block, (3, 2))
    assert list(rebuilt.sources.values()) == ["compiled"]
    assert any("damaged (checksum differs); compiling it ahead of time" in line for line in lines), lines
    check_rows(again := forward_in(tmp_path, []), block, (2,))
    assert list(again.sources.values()) == ["loaded"]


def test_an_artifact_torch_cannot_load_is_compiled_again(block: TinyBlock, tmp_path: Path) -> None:
    """Bytes that match their recorded checksum but are no artifact (written by something else)."""
    check_rows(forward_in(tmp_path, []), block, (2,))
    (artifact,) = tmp_path.glob("block-*.bin")
    description_path = artifact.with_suffix(".json")
    description = json.loads(description_path.read_text())
    artifact.write_bytes(b"not an artifact")
    import hashlib

    description["sha256"] = hashlib.sha256(b"not an artifact").hexdigest()
    description_path.write_text(json.dumps(description))

    lines: list[str] = []
    rebuilt = forward_in(tmp_path, lines)
    check_rows(rebuilt, block, (2,))
    assert list(rebuilt.sources.values()) == ["compiled"]
    assert any("unloadable (" in line for line in lines), lines


def test_a_forward_with_a_graph_break_runs_through_torch_compile_and_is_remembered(block: TinyBlock,
                                                                                   tmp_path: Path) -> None:
    lines: list[str] = []
    forward = forward_in(tmp_path, lines, function=breaking_forward)
    with torch.inference_mode():
        sample, scale = inputs(2, dynamic=True)
        torch.testing.assert_close(forward(block, sample, scale), block(sample, scale) + 1)
    assert list(forward.sources.values()) == ["torch.compile"]
    assert any("cannot be compiled ahead of time" in line for line in lines), lines

    lines.clear()
    later = forward_in(tmp_path, lines, function=breaking_forward)
    with torch.inference_mode():
        torch.testing.assert_close(later(block, sample, scale), block(sample, scale) + 1)
    assert any("not precompilable (recorded)" in line for line in lines), lines
    torch._dynamo.reset()


def test_without_a_folder_nothing_is_written(block: TinyBlock, tmp_path: Path) -> None:
    forward = PrecompiledForward("block", block_forward, None, KEY, backend=BACKEND)
    check_rows(forward, block, (2,))
    assert forward.sources == {"float32[*x4x6x6]cpu;float32[*]cpu": "compiled"}
    torch._dynamo.reset()


def test_input_signature_names_dynamic_rows_layouts_and_dicts() -> None:
    sample = torch.zeros((2, 4, 3, 3)).contiguous(memory_format=torch.channels_last)
    torch._dynamo.mark_dynamic(sample, 0)
    added = {"time_ids": torch.zeros((2, 6), dtype=torch.float16), "text_embeds": torch.zeros((2, 8))}
    assert input_signature((sample, None, added)) == (
        "float32[*x4x3x3]cpu,cl;None;{text_embeds:float32[2x8]cpu,time_ids:float16[2x6]cpu}")


def test_prune_removes_the_artifacts_no_forward_used(block: TinyBlock, tmp_path: Path) -> None:
    """An engine rebuilt for other weights (another key) leaves its old artifacts behind; the
    engine removes those its forwards did not use this time."""
    check_rows(forward_in(tmp_path, []), block, (2,))
    current = forward_in(tmp_path, [], {**KEY, "weights_hash": "w2"})
    check_rows(current, block, (2,))
    assert len(list(tmp_path.iterdir())) == 4
    assert prune(tmp_path, current.used_paths()) == 2
    assert sorted(tmp_path.iterdir()) == sorted(current.used_paths())
    check_rows(again := forward_in(tmp_path, [], {**KEY, "weights_hash": "w2"}), block, (2,))
    assert list(again.sources.values()) == ["loaded"]


class RenamedBlock(TinyBlock):
    """The same computation with its convolution under another name: an artifact compiled for
    `TinyBlock` reads `block.conv`, which this model does not have."""

    def __init__(self) -> None:
        super().__init__()
        self.first = self.conv
        del self.conv

    def forward(self, sample: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        hidden = F.silu(self.first(sample))
        tokens = hidden.flatten(2).transpose(1, 2)
        attended = F.scaled_dot_product_attention(tokens, tokens, tokens)
        return self.proj(attended).transpose(1, 2).reshape(sample.shape) * scale[:, None, None, None]


def test_an_artifact_that_loads_but_fails_its_first_call_is_compiled_again(block: TinyBlock, tmp_path: Path) -> None:
    """A model whose structure changed under an unchanged key: the loaded code cannot run on it,
    and the forward compiles it again instead of failing the load."""
    check_rows(forward_in(tmp_path, []), block, (2,))
    renamed = RenamedBlock().eval()
    lines: list[str] = []
    rebuilt = forward_in(tmp_path, lines)
    check_rows(rebuilt, renamed, (3, 2))
    assert list(rebuilt.sources.values()) == ["compiled"]
    assert any("failed on its first call" in line for line in lines), lines
