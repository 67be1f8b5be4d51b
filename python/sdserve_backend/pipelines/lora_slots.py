"""Per-row LoRA inside the engine's captured UNet graphs: adapters in static slot tables, each row
gathering its own.

A CUDA graph replays fixed kernels on fixed buffers, so the adapters of a batch cannot be arguments
of a captured call; they are the contents of tables it reads. Per LoRA site (a layer some loaded
adapter targets) one table holds `slots` entries, each the down weights [R, in] and the up weights
[out, R] of one adapter at one scale (or of the several adapters one request asked for, side by side
along the rank), zero-padded to the site's rank capacity R; entry 0 stays zero, for rows without
LoRA. Each row of a call names its entry with an integer, an input of the captured call like the
latents, and the site adds

    y[row] += up[slot[row]] @ (down[slot[row]] @ x[row])

with one gather and two batched matmuls whatever the mix of rows, each row paying for its own
adapters only: the gathered per-row LoRA of Punica's BGMV kernel (Chen et al. 2023, "Punica"). The
second matmul accumulates into the base layer's output in place (cuBLAS with beta = 1): at a rank
of 32 the update costs little arithmetic next to the layer's, but it reads the layer's input once
more and its output twice more, which is most of its time.

A mix enters free entries (least recently used first) when a batch first uses it: copies on the
device, outside the graphs. The tables grow, and the graphs reading them are captured again (their
`version` changes), when an adapter needs a site or a rank they lack, up to `max_rank` per layer; a
mix of more distinct adapter sets than free entries, or of a higher rank, does not fit (`rows`
answers None) and runs the model eagerly.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sdserve_backend.pipelines.lora_layers import ChosenLora, LoraSite, ModelLoras, RowBlock

DEFAULT_SLOTS = 8
DEFAULT_MAX_RANK = 128
# Rank capacities are powers of two from this up, so that growing ranks recapture rarely.
MIN_RANK = 8

# One row's adapters as the tables key them: (adapter id, scale) in the request's order.
MixKey = tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class _SiteShape:
    """A site's table layout: per entry, down [rank, *inputs] then up [outputs, rank], flat."""

    rank: int
    inputs: tuple[int, ...]
    outputs: int

    @property
    def down_size(self) -> int:
        return self.rank * math.prod(self.inputs)

    @property
    def size(self) -> int:
        return self.down_size + self.outputs * self.rank


class LoraSlots:
    """The slot tables of one model's LoRA sites (`lora_layers.ModelLoras`), and which adapters
    each entry holds."""

    def __init__(self, loras: ModelLoras, slots: int = DEFAULT_SLOTS, max_rank: int = DEFAULT_MAX_RANK) -> None:
        if slots < 2:
            raise ValueError(f"LoRA slots must be at least 2 (one stays empty), got {slots}")
        if max_rank < 1:
            raise ValueError(f"the largest LoRA rank of the slot tables must be at least 1, got {max_rank}")
        self.loras = loras
        self.slots = slots
        self.max_rank = max_rank
        # The rank capacity per adapted layer (a fused QKV site holds three layers' worth).
        self.rank = 0
        # Changes whenever the tables are reallocated: graphs captured on older tables are stale.
        self.version = 0
        self.tables: dict[str, torch.Tensor] = {}
        self.shapes: dict[str, _SiteShape] = {}
        self._resident: OrderedDict[MixKey, int] = OrderedDict()
        # Per entry, the adapters it holds (kept so that the ids in the keys stay theirs).
        self._held: dict[int, tuple[ChosenLora, ...]] = {}
        self._rows_key: tuple[object, ...] | None = None
        self._rows: torch.Tensor | None = None
        self._active: torch.Tensor | None = None

    # -----------------------------------------------------------------------------------------
    # Filling

    def rows(self, blocks: Sequence[RowBlock]) -> torch.Tensor | None:
        """Per row of a call over `blocks` (int64, on the model's device), the entry holding its
        adapters, 0 for rows without any; every entry filled. None when the mix does not fit: more
        distinct adapter sets than `slots - 1`, or a layer's rank over `max_rank`."""
        component = self.loras.component
        mixes: list[MixKey] = []
        chosen_of: dict[MixKey, tuple[ChosenLora, ...]] = {}
        for _, chosen in blocks:
            used = tuple(choice for choice in chosen if choice.adapter.targets(component) and choice.scale != 0)
            key = tuple((id(choice.adapter), choice.scale) for choice in used)
            mixes.append(key)
            if key:
                chosen_of[key] = used
        if len(chosen_of) > self.slots - 1:
            return None
        layout = tuple((rows, key) for (rows, _), key in zip(blocks, mixes, strict=True))
        if (self.version, layout) == self._rows_key and self._rows is not None and all(key in self._resident for key in chosen_of):
            for key in chosen_of:
                self._resident.move_to_end(key)
            return self._rows

        # 1. Tables that hold every site and rank of the mix
        needed = max((self._layer_rank(chosen) for chosen in chosen_of.values()), default=0)
        if needed > self.max_rank:
            return None
        sites = self.loras.site_layers()
        if needed > self.rank:
            needed = min(self.max_rank, max(MIN_RANK, 1 << (needed - 1).bit_length()))
        if needed > self.rank or any(self.shapes.get(path, _SiteShape(0, (), 0)).rank < self.rank * layers
                                     for path, layers in sites.items()):
            self._allocate(sites, max(needed, self.rank))

        # 2. An entry for each adapter set, filling the least recently used free ones
        in_use = {self._resident[key] for key in chosen_of if key in self._resident}
        slot_of: dict[MixKey, int] = {(): 0}
        for key, chosen in chosen_of.items():
            slot = self._resident.get(key)
            if slot is None:
                slot = self._free_slot(in_use)
                self._fill(slot, chosen)
                self._resident[key] = slot
                in_use.add(slot)
            self._resident.move_to_end(key)
            slot_of[key] = slot

        # 3. The row indices, made once per mix of rows (a batch keeps one for many steps)
        table = [slot_of[key] for (rows, _), key in zip(blocks, mixes, strict=True) for _ in range(rows)]
        device = self._device()
        host = torch.tensor(table, dtype=torch.long)
        if device.type == "cuda":
            host = host.pin_memory()
        self._rows = host.to(device, non_blocking=True)
        self._rows_key = (self.version, layout)
        return self._rows

    def _layer_rank(self, chosen: Sequence[ChosenLora]) -> int:
        """The rank per layer that `chosen` side by side need."""
        ranks: dict[str, int] = {}
        for choice in chosen:
            for key, (down, _) in choice.adapter.layers.get(self.loras.component, {}).items():
                site = key.split("#")[0]
                ranks[site] = ranks.get(site, 0) + int(down.shape[0])
        layers = self.loras.site_layers()
        return max((math.ceil(rank / layers.get(site, 1)) for site, rank in ranks.items()), default=0)

    def _allocate(self, sites: dict[str, int], rank: int) -> None:
        """Zeroed tables for every site at `rank` per layer; every entry forgotten."""
        self.tables, self.shapes = {}, {}
        # The adapters' dtype (`LoraLibrary.load`), not the layer's: a layer may hold its weight in
        # another (the engine's FP8 layers).
        dtype = next(self.loras.model.parameters()).dtype
        for path, layers in sites.items():
            base = self.loras.model.get_submodule(path)
            weight = (base.base if isinstance(base, LoraSite) else base).weight
            shape = _SiteShape(rank * layers, tuple(int(size) for size in weight.shape[1:]), int(weight.shape[0]))
            self.shapes[path] = shape
            self.tables[path] = torch.zeros((self.slots, shape.size), dtype=dtype, device=weight.device)
        self.rank = rank
        self.version += 1
        self._resident.clear()
        self._held.clear()
        self._rows_key, self._rows = None, None

    def _free_slot(self, in_use: set[int]) -> int:
        taken = set(self._resident.values())
        for slot in range(1, self.slots):
            if slot not in taken:
                return slot
        for key, slot in self._resident.items():  # least recently used first
            if slot not in in_use:
                del self._resident[key]
                self._held.pop(slot, None)
                return slot
        raise AssertionError("more adapter sets than slots")  # rows() counted them first

    def _fill(self, slot: int, chosen: tuple[ChosenLora, ...]) -> None:
        """Entry `slot` of every table: the adapters of `chosen` along the rank, scales in `up`."""
        parts: dict[str, list[tuple[torch.Tensor, torch.Tensor, float]]] = {}
        for choice in chosen:
            for key, (down, up) in choice.adapter.layers.get(self.loras.component, {}).items():
                parts.setdefault(key.split("#")[0], []).append((down, up, choice.scale))
        for path, table in self.tables.items():
            shape = self.shapes[path]
            entry = table[slot]
            entry.zero_()
            downs = entry[: shape.down_size].view(shape.rank, *shape.inputs)
            ups = entry[shape.down_size:].view(shape.outputs, shape.rank)
            start = 0
            for down, up, scale in parts.get(path, ()):
                rank = int(down.shape[0])
                downs[start:start + rank].copy_(down)
                ups[:, start:start + rank].copy_((up.reshape(shape.outputs, rank).float() * scale).to(ups.dtype))
                start += rank
        self._held[slot] = chosen

    def _device(self) -> torch.device:
        table = next(iter(self.tables.values()), None)
        return table.device if table is not None else next(self.loras.model.parameters()).device

    # -----------------------------------------------------------------------------------------
    # Calls

    @contextlib.contextmanager
    def active(self, rows: torch.Tensor) -> Iterator[None]:
        """Within the block, the model's LoRA sites add row i the update of entry `rows[i]` (what a
        captured LoRA graph runs); `rows` is the call's own buffer, so a replay reads new values."""
        self._active = rows
        try:
            yield
        finally:
            self._active = None

    def apply(self, site: LoraSite, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """`y` (the base layer's output for `x`) plus each row's update, or None when no slot rows
        are active."""
        rows = self._active
        if rows is None:
            return None
        table = self.tables.get(site.path)
        if table is None:
            return y
        shape = self.shapes[site.path]
        count = x.shape[0]
        if rows.shape[0] != count:
            raise ValueError(f"LoRA site {site.path!r}: {count} rows, but slot indices for {rows.shape[0]}")
        # [rows, down + up]: each row's entry; down [rows, R, *inputs] and up [rows, out, R] are views.
        gathered = table.index_select(0, rows)
        down = gathered[:, : shape.down_size].view(count, shape.rank, *shape.inputs)
        up = gathered[:, shape.down_size:].view(count, shape.outputs, shape.rank)
        base = site.base
        if isinstance(base, torch.nn.Conv2d):
            return _add_conv(base, x, y, down, up)
        hidden = torch.bmm(x.reshape(count, -1, x.shape[-1]), down.transpose(1, 2))
        y.view(count, -1, shape.outputs).baddbmm_(hidden, up.transpose(1, 2))
        return y


def _add_conv(base: torch.nn.Conv2d, x: torch.Tensor, y: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The per-row update of a convolution: a 1x1 one as the batched matmuls of a `Linear` over the
    pixels, any other as one grouped convolution with a group per row."""
    count, channels = x.shape[0], x.shape[1]
    rank = down.shape[1]
    pointwise = (base.kernel_size == (1, 1) and base.stride == (1, 1) and base.padding in ((0, 0), "valid")
                 and base.dilation == (1, 1))
    if pointwise:
        # [rows, pixels, R]; free of copies when x is channels_last
        pixels = x.permute(0, 2, 3, 1).reshape(count, -1, channels)
        hidden = torch.bmm(pixels, down.reshape(count, rank, channels).transpose(1, 2))
    else:
        grouped = F.conv2d(x.reshape(1, count * channels, *x.shape[2:]), down.reshape(count * rank, *down.shape[2:]),
                           None, base.stride, base.padding, base.dilation, groups=count)
        hidden = grouped.view(count, rank, -1).transpose(1, 2)
    outputs = y.shape[1]
    if y.is_contiguous():
        y.view(count, outputs, -1).baddbmm_(up, hidden.transpose(1, 2))
    elif y.is_contiguous(memory_format=torch.channels_last):
        y.permute(0, 2, 3, 1).view(count, -1, outputs).baddbmm_(hidden, up.transpose(1, 2))
    else:
        y = y + torch.bmm(up, hidden.transpose(1, 2)).view(y.shape)
    return y

