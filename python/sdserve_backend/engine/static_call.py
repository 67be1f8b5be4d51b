"""One function run through static input buffers, padded to a row-count bucket.

Every input has the row count as its first dimension, and the function treats rows independently
(a UNet or VAE call: normalisation and attention are per sample), so padded rows never change the
real rows. With `use_graphs` each bucket is captured once as a CUDA graph and later calls only copy
their inputs into the buffers and replay it: one launch instead of hundreds, no host syncs.
Without graphs (the CPU, tests) the function runs eagerly on the same padded buffers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch

from sdserve_backend.engine.buckets import pick_bucket

# A function returns one tensor, or a tuple of tensors with one row per input row each.
Output = torch.Tensor | tuple[torch.Tensor, ...]
Function = Callable[..., Output]
log = logging.getLogger("sdserve.engine")
# Warm-up runs before a capture: the first call picks kernels and allocates workspaces.
WARMUP_RUNS = 2


class BucketedCall:
    """Runs `function(**inputs)` for 1..max(buckets) rows through per-bucket static buffers."""

    def __init__(
        self,
        function: Function,
        example: Mapping[str, torch.Tensor],
        buckets: tuple[int, ...],
        use_graphs: bool,
        channels_last: tuple[str, ...] = (),
        pool: Any = None,
        capture_error_mode: str = "global",
    ) -> None:
        """`capture_error_mode`: torch.cuda.graph's; "thread_local" for a capture while other
        threads may use the GPU (a capture at load time has it to itself)."""
        self.function = function
        self.capture_error_mode = capture_error_mode
        self.buckets = tuple(sorted(buckets))
        self.use_graphs = use_graphs
        self.channels_last = channels_last
        self._pool = pool
        largest = self.buckets[-1]
        # One buffer per input, sized for the largest bucket; bucket b uses its first b rows,
        # which stay contiguous (and channels_last) as a slice along dimension 0.
        self.buffers: dict[str, torch.Tensor] = {}
        for name, tensor in example.items():
            buffer = torch.zeros((largest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
            if name in channels_last and buffer.ndim == 4:
                buffer = buffer.contiguous(memory_format=torch.channels_last)
            self.buffers[name] = buffer
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._outputs: dict[int, Output] = {}

    @property
    def max_rows(self) -> int:
        return self.buckets[-1]

    @property
    def pool(self) -> Any:
        """The graphs' memory pool (None before a capture without one given)."""
        return self._pool

    def accepts(self, inputs: Mapping[str, torch.Tensor]) -> bool:
        """True when `inputs` fit the buffers: same names, per-row shapes and device, rows in range."""
        if inputs.keys() != self.buffers.keys():
            return False
        rows = {tensor.shape[0] for tensor in inputs.values()}
        if len(rows) != 1 or not 1 <= next(iter(rows)) <= self.max_rows:
            return False
        return all(
            tensor.shape[1:] == self.buffers[name].shape[1:] and tensor.device == self.buffers[name].device
            for name, tensor in inputs.items()
        )

    def capture(self) -> None:
        """Capture one CUDA graph per bucket, largest first so the smaller reuse its memory."""
        if not self.use_graphs:
            return
        for size in reversed(self.buckets):
            views = self._views(size)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP_RUNS):
                    self.function(**views)
            torch.cuda.current_stream().wait_stream(side)
            graph, output = self._capture_one(views)
            if self._pool is None:
                self._pool = graph.pool()
            self._graphs[size] = graph
            self._outputs[size] = output
        torch.cuda.synchronize()

    def _capture_one(self, views: Mapping[str, torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, Output]:
        try:
            return self._capture_once(views)
        except torch.AcceleratorError as error:
            # A call that is unsafe while capturing invalidates the capture (seen in SDXL builds on
            # the first capture of one tuning candidate; cause not found). The error is not sticky,
            # and the second capture went through: capture once more before failing the load.
            if "capture" not in str(error):
                raise
            log.warning("CUDA graph capture failed (%s); capturing again", str(error).splitlines()[0])
            torch.cuda.synchronize()
            return self._capture_once(views)

    def _capture_once(self, views: Mapping[str, torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, Output]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode=self.capture_error_mode):
            output = self.function(**views)
        return graph, output

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> Output:
        """The function's output for `inputs` (which `accepts` must allow), as fresh tensors."""
        rows = next(iter(inputs.values())).shape[0]
        size = pick_bucket(rows, self.buckets)
        assert size is not None, f"{rows} rows exceed the largest bucket {self.max_rows}"
        for name, tensor in inputs.items():
            self.buffers[name][:rows].copy_(tensor)
        graph = self._graphs.get(size)
        if graph is not None:
            graph.replay()
            output = self._outputs[size]
        else:
            output = self.function(**self._views(size))
        # A copy: the next replay of any bucket (they share one memory pool) overwrites the output.
        if isinstance(output, tuple):
            return tuple(part[:rows].clone(memory_format=torch.contiguous_format) for part in output)
        return output[:rows].clone(memory_format=torch.contiguous_format)

    def _views(self, size: int) -> dict[str, torch.Tensor]:
        return {name: buffer[:size] for name, buffer in self.buffers.items()}
