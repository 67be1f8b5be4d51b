"""Per-row LoRA inside the engine's captured UNet graphs: adapters in one static slot table, each row
gathering its own.

A CUDA graph replays fixed kernels on fixed buffers, so the adapters of a batch cannot be arguments
of a captured call; they are the contents of a table it reads. The table holds `slots` entries; an
entry holds, for every LoRA site (a layer some loaded adapter targets), the down weights [R, in] and
the up weights [out, R] of one adapter at one scale (or of the several adapters one request asked
for, side by side along the rank), zero-padded to the site's rank capacity R; entry 0 holds no
adapter, for rows without LoRA. Each row of a call names its entry with an integer, an input of the
captured call like the latents; the call gathers every row's entry once when it starts, and each
site adds

    y[row] += up[slot[row]] @ (down[slot[row]] @ x[row])

with two batched matmuls on its part of the gathered rows, whatever the mix of rows, each row paying
for its own adapters only: the gathered per-row LoRA of Punica's BGMV kernel (Chen et al. 2023,
"Punica").

At a rank of 32 the update costs little arithmetic next to the layer's own; its time is memory
traffic and kernel count. So where the layer is a plain `Linear` (or a 1x1 convolution on
channels-last inputs) the site runs the layer itself: the up matmul writes the update, with the
layer's bias carried in the entries as one more rank against a hidden column of ones, and the layer's
matmul accumulates into it (cuBLAS with beta = 1), which reads it in the epilogue of a GEMM bound by
arithmetic. Adding the update to the layer's output afterwards would read and write that output once
more, the largest cost of the update. The hiddens with a column of ones are kept buffers, one per
shape, whose ones a call writes once for all the sites of that shape (a kernel written at capture is
only recorded, so each captured call writes them itself). Sites that read the same tensor (the cross-attention key and
value projections of every block, on the text encoder's states) keep their downs side by side in the
table, and the first of them in a call computes the hidden of all of them with one matmul.

A mix enters free entries (least recently used first) when a batch first uses it: copies on the
device, outside the graphs. The table grows, and the graphs reading it are captured again (its
`version` changes), when an adapter needs a site or a rank it lacks, up to `max_rank` per layer; a
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
# The hidden columns a layer's bias takes (one column of ones; the rest keep the hidden's rows at a
# multiple of 16 bytes in half precision, which cuBLAS's fast kernels need).
BIAS_COLUMNS = 8
# The cross-attention projections that read the text encoder's states.
_SHARED_INPUT_LEAVES = ("to_k", "to_v", "to_kv")

# One row's adapters as the tables key them: (adapter id, scale) in the request's order.
MixKey = tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class _SiteShape:
    """Where a site's weights lie in each entry: down [hidden, *inputs] at `down`, up [outputs,
    hidden] at `up`. `hidden` is the rank capacity plus the bias's columns when the up carries the
    layer's bias. Sites of one `group` read the same input; their downs lie side by side, this
    one's from row `group_row`."""

    rank: int
    hidden: int
    inputs: tuple[int, ...]
    outputs: int
    down: int
    up: int
    group: tuple[object, ...] | None = None
    group_row: int = 0

    @property
    def down_size(self) -> int:
        return self.hidden * math.prod(self.inputs)

    @property
    def up_size(self) -> int:
        return self.outputs * self.hidden

    @property
    def carries_bias(self) -> bool:
        return self.hidden > self.rank


@dataclass(frozen=True)
class _Group:
    """Sites reading one input: their downs [rows, in] from `start` of each entry."""

    start: int
    rows: int
    inputs: int


def _plain_weight(layer: torch.nn.Module) -> bool:
    """Whether the layer is a plain `Linear` or `Conv2d` whose matmul the site may run itself (not,
    say, the engine's FP8 layers, a `Linear` with a float8 weight)."""
    return type(layer) in (torch.nn.Linear, torch.nn.Conv2d) and type(layer.weight) in (torch.nn.Parameter, torch.Tensor)


def _pointwise(layer: torch.nn.Module) -> bool:
    return (isinstance(layer, torch.nn.Conv2d) and layer.kernel_size == (1, 1) and layer.stride == (1, 1)
            and layer.padding in ((0, 0), "valid") and layer.dilation == (1, 1))


class LoraSlots:
    """The slot table of one model's LoRA sites (`lora_layers.ModelLoras`), and which adapters
    each entry holds."""

    def __init__(self, loras: ModelLoras, slots: int = DEFAULT_SLOTS, max_rank: int = DEFAULT_MAX_RANK,
                 fold_base: bool = True, kept_ones: bool = True) -> None:
        """`fold_base`: sites run a plain layer's matmul themselves, accumulating into the update
        (see the module's docstring); False adds the update to the layer's output. `kept_ones`:
        the hiddens against a bias are kept buffers whose ones a call writes once per shape; False
        writes them at every site."""
        if slots < 2:
            raise ValueError(f"LoRA slots must be at least 2 (one stays empty), got {slots}")
        if max_rank < 1:
            raise ValueError(f"the largest LoRA rank of the slot tables must be at least 1, got {max_rank}")
        self.loras = loras
        self.slots = slots
        self.max_rank = max_rank
        self.fold_base = fold_base
        self.kept_ones = kept_ones
        # (rows, tokens, hidden, rank, dtype, device) -> a hidden buffer with ones in its bias
        # columns, and (inside `active`) those the call wrote the ones of.
        self._ones_hidden: dict[tuple[object, ...], torch.Tensor] = {}
        self._ones_written: set[tuple[object, ...]] = set()
        # The rank capacity per adapted layer (a fused QKV site holds three layers' worth).
        self.rank = 0
        # Changes whenever the table is reallocated: graphs captured on an older table are stale.
        self.version = 0
        # [slots, entry size]: every site's down and up per entry (`shapes`).
        self.table: torch.Tensor | None = None
        self.shapes: dict[str, _SiteShape] = {}
        self._groups: dict[tuple[object, ...], _Group] = {}
        self._resident: OrderedDict[MixKey, int] = OrderedDict()
        # Per entry, the adapters it holds (kept so that the ids in the keys stay theirs).
        self._held: dict[int, tuple[ChosenLora, ...]] = {}
        self._rows_key: tuple[object, ...] | None = None
        self._rows: torch.Tensor | None = None
        # Inside `active`: each row's entry, the rows' entries gathered, and per group the input
        # its hidden was computed on and that hidden.
        self._active: torch.Tensor | None = None
        self._gathered: torch.Tensor | None = None
        self._group_hidden: dict[tuple[object, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def nbytes(self) -> int:
        return 0 if self.table is None else self.table.numel() * self.table.element_size()

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

        # 1. A table that holds every site and rank of the mix
        needed = max((self._layer_rank(chosen) for chosen in chosen_of.values()), default=0)
        if needed > self.max_rank:
            return None
        sites = self.loras.site_layers()
        if needed > self.rank:
            needed = min(self.max_rank, max(MIN_RANK, 1 << (needed - 1).bit_length()))
        if needed > self.rank or any((self.shapes[path].rank if path in self.shapes else 0) < self.rank * layers
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

    def _base(self, path: str) -> torch.nn.Module:
        site = self.loras.model.get_submodule(path)
        return site.base if isinstance(site, LoraSite) else site

    def _shared_input(self, path: str, base: torch.nn.Module) -> tuple[object, ...] | None:
        """The group of sites reading the same input that `path` belongs to: the key and value
        projections of cross-attention layers read the encoder's states, unnormalised (diffusers'
        `norm_cross` unset), so all of them read one tensor."""
        parent_path, _, leaf = path.rpartition(".")
        if leaf not in _SHARED_INPUT_LEAVES or type(base) is not torch.nn.Linear:
            return None
        parent = self.loras.model.get_submodule(parent_path) if parent_path else self.loras.model
        if not getattr(parent, "is_cross_attention", False) or getattr(parent, "norm_cross", None):
            return None
        return ("encoder states", int(base.weight.shape[1]))

    def _allocate(self, sites: dict[str, int], rank: int) -> None:
        """A zeroed table for every site at `rank` per layer (the layers' biases in every entry);
        every entry forgotten."""
        self.table, self.shapes, self._groups = None, {}, {}
        # The adapters' dtype (`LoraLibrary.load`), not the layer's: a layer may hold its weight in
        # another (the engine's FP8 layers).
        dtype = next(self.loras.model.parameters()).dtype
        bases = {path: self._base(path) for path in sites}
        groups: dict[tuple[object, ...], list[str]] = {}
        for path, base in bases.items():
            group = self._shared_input(path, base)
            if group is not None:
                groups.setdefault(group, []).append(path)
        grouped = {path: group for group, paths in groups.items() for path in paths}

        def shape_of(path: str) -> tuple[int, int, tuple[int, ...], int]:
            base = bases[path]
            site_rank = rank * sites[path]
            folds = _plain_weight(base) and (isinstance(base, torch.nn.Linear) or _pointwise(base))
            hidden = site_rank + (BIAS_COLUMNS if folds and base.bias is not None else 0)
            return site_rank, hidden, tuple(int(size) for size in base.weight.shape[1:]), int(base.weight.shape[0])

        # Each group's downs first, side by side; then every other site's down and up.
        offset = 0
        downs: dict[str, tuple[int, int]] = {}
        for group, paths in groups.items():
            start, row = offset, 0
            for path in paths:
                _, hidden, inputs, _ = shape_of(path)
                downs[path] = (offset, row)
                offset += hidden * math.prod(inputs)
                row += hidden
            self._groups[group] = _Group(start, row, inputs[0])
        for path in sites:
            site_rank, hidden, inputs, outputs = shape_of(path)
            if path in downs:
                down, row = downs[path]
            else:
                down, row = offset, 0
                offset += hidden * math.prod(inputs)
            self.shapes[path] = _SiteShape(site_rank, hidden, inputs, outputs, down, offset, grouped.get(path), row)
            offset += outputs * hidden
        device = next(self.loras.model.parameters()).device
        self.table = torch.zeros((self.slots, offset), dtype=dtype, device=device)
        for slot in range(self.slots):
            self._set_biases(slot)
        self.rank = rank
        self.version += 1
        # Sized for the old capacity; the graphs captured on them are stale with the old table.
        self._ones_hidden.clear()
        self._resident.clear()
        self._held.clear()
        self._rows_key, self._rows = None, None

    def _views(self, entry: torch.Tensor, shape: _SiteShape) -> tuple[torch.Tensor, torch.Tensor]:
        """One entry's (down [hidden, *inputs], up [outputs, hidden]) of a site."""
        down = entry[shape.down:shape.down + shape.down_size].view(shape.hidden, *shape.inputs)
        up = entry[shape.up:shape.up + shape.up_size].view(shape.outputs, shape.hidden)
        return down, up

    def _set_biases(self, slot: int) -> None:
        """The layers' biases in entry `slot`: the up's first bias column, against the ones the
        sites put in the hidden."""
        assert self.table is not None
        for path, shape in self.shapes.items():
            if shape.carries_bias:
                _, up = self._views(self.table[slot], shape)
                up[:, shape.rank].copy_(self._base(path).bias.detach().reshape(-1))

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
        """Entry `slot`: the adapters of `chosen` along the rank, scales in `up`."""
        assert self.table is not None
        parts: dict[str, list[tuple[torch.Tensor, torch.Tensor, float]]] = {}
        for choice in chosen:
            for key, (down, up) in choice.adapter.layers.get(self.loras.component, {}).items():
                parts.setdefault(key.split("#")[0], []).append((down, up, choice.scale))
        entry = self.table[slot]
        entry.zero_()
        self._set_biases(slot)
        for path, shape in self.shapes.items():
            downs, ups = self._views(entry, shape)
            start = 0
            for down, up, scale in parts.get(path, ()):
                rank = int(down.shape[0])
                downs[start:start + rank].copy_(down)
                ups[:, start:start + rank].copy_((up.reshape(shape.outputs, rank).float() * scale).to(ups.dtype))
                start += rank
        self._held[slot] = chosen

    def _device(self) -> torch.device:
        return self.table.device if self.table is not None else next(self.loras.model.parameters()).device

    # -----------------------------------------------------------------------------------------
    # Calls

    @contextlib.contextmanager
    def active(self, rows: torch.Tensor) -> Iterator[None]:
        """Within the block, the model's LoRA sites add row i the update of entry `rows[i]` (what a
        captured LoRA graph runs); `rows` is the call's own buffer, so a replay reads new values.
        Every row's entry is gathered here, once for all the sites of the call."""
        self._active = rows
        self._gathered = self.table.index_select(0, rows) if self.table is not None else None
        self._group_hidden, self._ones_written = {}, set()
        try:
            yield
        finally:
            self._active, self._gathered, self._group_hidden, self._ones_written = None, None, {}, set()

    def forward(self, site: LoraSite, x: torch.Tensor) -> torch.Tensor | None:
        """The site's output for `x` (its layer's plus each row's update), or None when no slot
        rows are active."""
        rows = self._active
        if rows is None:
            return None
        shape = self.shapes.get(site.path)
        gathered = self._gathered
        if shape is None or gathered is None:
            return site.base(x)
        count = x.shape[0]
        if rows.shape[0] != count:
            raise ValueError(f"LoRA site {site.path!r}: {count} rows, but slot indices for {rows.shape[0]}")
        # Each row's up [rows, out, hidden], a view of the gathered entries.
        up = gathered[:, shape.up:shape.up + shape.up_size].view(count, shape.outputs, shape.hidden)
        base = site.base
        if isinstance(base, torch.nn.Conv2d):
            return self._conv(site, shape, x, up)
        folds = self.fold_base and _plain_weight(base) and base.weight.dtype == x.dtype == up.dtype
        tokens = x.reshape(count, -1, x.shape[-1])
        hidden = self._hidden(site, shape, tokens, ones=folds)
        if folds:
            # The update (with the bias), then the layer's matmul accumulating into it.
            out = torch.bmm(hidden, up.transpose(1, 2))
            out.view(-1, shape.outputs).addmm_(tokens.reshape(-1, tokens.shape[-1]), base.weight.t())
            return out.view(*x.shape[:-1], shape.outputs)
        y = base(x)
        y.view(count, -1, shape.outputs).baddbmm_(hidden[..., :shape.rank], up[..., :shape.rank].transpose(1, 2))
        return y

    def _hidden(self, site: LoraSite, shape: _SiteShape, tokens: torch.Tensor, ones: bool) -> torch.Tensor:
        """[rows, tokens, hidden]: each row's down applied to its tokens [rows, tokens, in], with
        ones in the bias columns when `ones` (else they are zero)."""
        assert self._gathered is not None
        count = tokens.shape[0]
        group = self._groups.get(shape.group) if shape.group is not None else None
        hidden: torch.Tensor | None = None
        if group is not None:
            known = self._group_hidden.get(shape.group)  # type: ignore[arg-type]
            if known is None or _same_tensor(known[0], tokens):
                if known is None:
                    downs = self._gathered[:, group.start:group.start + group.rows * group.inputs]
                    known = (tokens, torch.bmm(tokens, downs.view(count, group.rows, group.inputs).transpose(1, 2)))
                    self._group_hidden[shape.group] = known  # type: ignore[index]
                hidden = known[1][..., shape.group_row:shape.group_row + shape.hidden]
        if hidden is None:
            down = self._gathered[:, shape.down:shape.down + shape.down_size].view(count, shape.hidden, tokens.shape[-1])
            if ones and shape.carries_bias and self.kept_ones:
                kept = self._kept_hidden(count, tokens, shape)
                torch.bmm(tokens, down[:, :shape.rank].transpose(1, 2), out=kept[..., :shape.rank])
                return kept
            hidden = torch.bmm(tokens, down.transpose(1, 2))
        if ones and shape.carries_bias:
            hidden[..., shape.rank:].fill_(1)
        return hidden

    def _kept_hidden(self, count: int, tokens: torch.Tensor, shape: _SiteShape) -> torch.Tensor:
        """A buffer for a hidden [rows, tokens, hidden] with ones in the bias columns, one per
        shape: a site's hidden is used up by its own up matmul before the next site's is made."""
        key = (count, tokens.shape[1], shape.hidden, shape.rank, tokens.dtype, tokens.device)
        kept = self._ones_hidden.get(key)
        if kept is None:
            # A normal tensor, not an inference one: calls outside inference mode write it too.
            with torch.inference_mode(False):
                kept = torch.empty((count, tokens.shape[1], shape.hidden), dtype=tokens.dtype, device=tokens.device)
            self._ones_hidden[key] = kept
        if key not in self._ones_written:
            kept[..., shape.rank:].fill_(1)
            self._ones_written.add(key)
        return kept

    def _conv(self, site: LoraSite, shape: _SiteShape, x: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """The per-row update of a convolution: a 1x1 one as the batched matmuls of a `Linear` over
        the pixels (running the layer's matmul too on channels-last inputs), any other as one
        grouped convolution with a group per row."""
        assert self._gathered is not None
        base = site.base
        count, channels = x.shape[0], x.shape[1]
        down = self._gathered[:, shape.down:shape.down + shape.down_size].view(count, shape.hidden, *shape.inputs)
        rank, outputs = shape.rank, shape.outputs
        if _pointwise(base):
            if x.is_contiguous(memory_format=torch.channels_last):
                pixels = x.permute(0, 2, 3, 1).reshape(count, -1, channels)  # a view
                folds = self.fold_base and _plain_weight(base) and base.weight.dtype == x.dtype == up.dtype
                hidden = self._hidden(site, shape, pixels, ones=folds)
                if folds:
                    out = torch.bmm(hidden, up.transpose(1, 2))
                    out.view(-1, outputs).addmm_(pixels.reshape(-1, channels), base.weight.reshape(outputs, channels).t())
                    return out.view(count, *x.shape[2:], outputs).permute(0, 3, 1, 2)
                y = base(x)
                return _add_pixels(y, hidden[..., :rank].transpose(1, 2), up[..., :rank])
            # [rows, R, pixels] straight from the channels-first input (no copy of it)
            hidden_t = torch.bmm(down[:, :rank].reshape(count, rank, channels), x.reshape(count, channels, -1))
            return _add_pixels(base(x), hidden_t, up[..., :rank])
        grouped = F.conv2d(x.reshape(1, count * channels, *x.shape[2:]), down[:, :rank].reshape(count * rank, *shape.inputs),
                           None, base.stride, base.padding, base.dilation, groups=count)
        return _add_pixels(base(x), grouped.view(count, rank, -1), up[..., :rank])


def _same_tensor(known: torch.Tensor, tensor: torch.Tensor) -> bool:
    """Whether two tensors are the same memory, viewed alike (`known` is held, so its memory is
    not another's now)."""
    return (known is tensor or (known.data_ptr() == tensor.data_ptr() and known.shape == tensor.shape
                                and known.stride() == tensor.stride() and known.dtype == tensor.dtype))


def _add_pixels(y: torch.Tensor, hidden_t: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """`y` [rows, out, H, W] plus up [rows, out, R] @ hidden_t [rows, R, pixels], in place when
    `y`'s layout allows."""
    count, outputs = y.shape[0], y.shape[1]
    if y.is_contiguous():
        y.view(count, outputs, -1).baddbmm_(up, hidden_t)
    elif y.is_contiguous(memory_format=torch.channels_last):
        y.permute(0, 2, 3, 1).view(count, -1, outputs).baddbmm_(hidden_t.transpose(1, 2), up.transpose(1, 2))
    else:
        y = y + torch.bmm(up, hidden_t).view(y.shape)
    return y
