"""Choosing PyTorch's scaled-dot-product-attention backend for the engine's calls."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

ATTENTION_BACKENDS = ("default", "flash", "cudnn", "efficient")


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Prefer backend `name` for SDPA inside the block; shapes it cannot run fall through to the
    others in order, so the choice never makes a call fail. "default" is PyTorch's own choice."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend must be one of {ATTENTION_BACKENDS}, got {name!r}")
    if name == "default":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    first = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
    }[name]
    rest = [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    order = [first, *(backend for backend in rest if backend != first)]
    try:
        context = sdpa_kernel(order, set_priority=True)
    except TypeError:  # PyTorch before 2.6 has no priority order: only the preferred one and math.
        context = sdpa_kernel([first, SDPBackend.MATH])
    with context:
        yield
