"""Choosing where a model instance runs: CUDA in float16 when there is a GPU, else CPU in float32."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype
    # Set when the requested kind could not be honoured, for the caller to log.
    warning: str | None = None


def choose_placement(instance_kind: str = "GPU", device_id: int = 0) -> Placement:
    """Placement for a Triton instance kind ("GPU", "CPU", "AUTO"/"" meaning GPU when present)."""
    kind = instance_kind.upper().removeprefix("KIND_")
    if kind == "CPU":
        return Placement(torch.device("cpu"), torch.float32)
    if torch.cuda.is_available():
        if not 0 <= device_id < torch.cuda.device_count():
            raise ValueError(
                f"model_instance_device_id {device_id} is out of range: {torch.cuda.device_count()} CUDA device(s)"
            )
        return Placement(torch.device("cuda", device_id), torch.float16)
    warning = "no CUDA device is available; running on CPU in float32" if kind == "GPU" else None
    return Placement(torch.device("cpu"), torch.float32, warning)
