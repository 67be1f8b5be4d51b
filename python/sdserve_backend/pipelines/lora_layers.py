"""Per-row LoRA on a shared model: rows of one call each get their own adapters and scales.

Each layer a loaded LoRA targets is wrapped once in a `LoraSite`, which adds to the base layer's
output the low-rank updates of the adapters active for the current call:

    y = base(x) + sum_k  w[row, k] * up_k(down_k(x))

with w[row, k] the scale row `row` asked adapter k for (0 when it did not). The K adapters of the
call are concatenated along the rank, so this is two dense matmuls (or convolutions) per layer
whatever the mix of rows, with no per-row work on the host, as multi-adapter servers batch
low-rank updates (Chen et al. 2023, "Punica"; Sheng et al. 2023, "S-LoRA"). The base weights are
never changed: a call without adapters runs the base layer alone, and adapters come and go without
reloading or re-fusing anything. Layers the engine fused (one QKV projection for three) take their
adapters' updates at the fused layer, each in its own slice of the outputs.

That is the eager path. Inside the engine's captured graphs the sites read a slot table instead
(`lora_slots.LoraSlots`): each row gathers its own adapters, so it pays for those alone.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from sdserve_backend.pipelines.lora_files import LoraPair

if TYPE_CHECKING:
    from sdserve_backend.pipelines.lora_slots import LoraSlots

# Adapter combinations whose concatenated weights are kept (one per mix of adapters in a batch).
PLAN_CACHE_SIZE = 8
FUSED_PROJECTIONS = {"to_q": ("to_qkv", 0), "to_k": ("to_qkv", 1), "to_v": ("to_qkv", 2)}
FUSED_CROSS_PROJECTIONS = {"to_k": ("to_kv", 0), "to_v": ("to_kv", 1)}


@dataclass(eq=False)
class LoraAdapter:
    """One LoRA file, loaded: per model ("unet", "text_encoder", "text_encoder_2") and per layer,
    its down and up weights on the model's device, the file's alpha / rank folded into `up`."""

    name: str
    # The name and the file's version: what a cached prompt embedding depends on.
    identity: str
    layers: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)

    def targets(self, component: str) -> bool:
        return bool(self.layers.get(component))


@dataclass(frozen=True)
class ChosenLora:
    """An adapter as one request asked for it."""

    adapter: LoraAdapter
    scale: float


# Per block of consecutive rows of a call: how many rows, and the adapters they use.
RowBlock = tuple[int, Sequence[ChosenLora]]


class LoraSite(torch.nn.Module):
    """A `Linear` or `Conv2d` plus the low-rank updates of the adapters active for this call."""

    def __init__(self, base: torch.nn.Module, owner: ModelLoras, path: str) -> None:
        super().__init__()
        self.base = base
        self.path = path
        # Not a submodule: the owner holds the model.
        object.__setattr__(self, "_owner", owner)

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slots = self._owner.slots
        if slots is not None:
            slotted = slots.forward(self, x)
            if slotted is not None:
                return slotted
        y = self.base(x)
        update = self._owner.update_for(self.path)
        if update is None:
            return y
        down, up, row_scale = update
        if isinstance(self.base, torch.nn.Conv2d):
            base = self.base
            hidden = F.conv2d(x, down, None, base.stride, base.padding, base.dilation)
            hidden = hidden * row_scale[:, :, None, None]
            return y + F.conv2d(hidden, up)
        hidden = F.linear(x, down)
        hidden = hidden * row_scale.view(row_scale.shape[0], *([1] * (hidden.ndim - 2)), row_scale.shape[1])
        return y + F.linear(hidden, up)


@dataclass
class _Plan:
    """For one combination of adapters: per site, every adapter's down weights concatenated along
    the rank, the up weights likewise (zero outside a fused layer's slice), and which adapter each
    rank belongs to."""

    sites: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    # Held so that the ids in the cache key stay theirs while the plan is cached.
    adapters: tuple[LoraAdapter, ...] = ()


@dataclass
class _Active:
    blocks: Sequence[RowBlock]
    adapters: list[LoraAdapter]
    # Made at the first site that asks (a call through the slot tables never does).
    plan: _Plan | None = None
    # [rows or 1, K]: each row's scale of each adapter of the plan.
    weights: torch.Tensor | None = None
    row_scales: dict[str, torch.Tensor] = field(default_factory=dict)


class ModelLoras:
    """The LoRA sites of one model (the UNet or a text encoder) and the adapters active in a call."""

    def __init__(self, model: torch.nn.Module, component: str) -> None:
        self.model = model
        self.component = component
        self._active: _Active | None = None
        self._plans: OrderedDict[tuple[int, ...], _Plan] = OrderedDict()
        self._weights_key: tuple[object, ...] | None = None
        self._weights: torch.Tensor | None = None
        self._weights_adapters: tuple[LoraAdapter, ...] = ()
        self._lock = threading.Lock()
        # Layer path -> (site path, slice of the site's outputs).
        self._routes: dict[str, tuple[str, int, int]] = {}
        # The slot tables of the engine's LoRA graphs, once a library made them (`lora_slots.py`).
        self.slots: LoraSlots | None = None

    @classmethod
    def of(cls, model: torch.nn.Module, component: str) -> ModelLoras:
        """The model's one `ModelLoras` (its sites answer to it, whichever library loads adapters)."""
        existing = model.__dict__.get("_sdserve_loras")
        if existing is None:
            existing = cls(model, component)
            model.__dict__["_sdserve_loras"] = existing
        return existing

    # -----------------------------------------------------------------------------------------
    # Loading

    def prepare(self, pairs: dict[str, LoraPair], device: torch.device, dtype: torch.dtype) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Wrap the layers `pairs` target (once) and return the pairs as the sites take them:
        per site path, down [rank, in, ...] and up [site outputs, rank, ...] with the scale folded in."""
        prepared: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        with self._lock:
            for layer_path, pair in pairs.items():
                site_path, start, size = self._route(layer_path)
                site = self.model.get_submodule(site_path)
                outputs = site.weight.shape[0]
                down = pair.down.to(device=device, dtype=torch.float32)
                up = pair.up.to(device=device, dtype=torch.float32) * pair.scale
                if size != outputs:
                    padded = torch.zeros((outputs, *up.shape[1:]), device=device, dtype=torch.float32)
                    padded[start:start + size] = up
                    up = padded
                key = site_path if site_path not in prepared else f"{site_path}#{layer_path}"
                prepared[key] = (down.to(dtype).contiguous(), up.to(dtype).contiguous())
        return prepared

    def _route(self, layer_path: str) -> tuple[str, int, int]:
        """Where the updates of `layer_path` go: its own site, or the fused projection that the
        engine made of it and its siblings (diffusers' `fuse_projections`)."""
        if layer_path in self._routes:
            return self._routes[layer_path]
        parent_path, _, leaf = layer_path.rpartition(".")
        parent = self.model.get_submodule(parent_path) if parent_path else self.model
        layer = getattr(parent, leaf)
        layer = layer.base if isinstance(layer, LoraSite) else layer
        size = int(layer.weight.shape[0])
        route = (layer_path, 0, size)
        if getattr(parent, "fused_projections", False):
            table = FUSED_CROSS_PROJECTIONS if getattr(parent, "is_cross_attention", False) else FUSED_PROJECTIONS
            if leaf in table and hasattr(parent, table[leaf][0]):
                fused, position = table[leaf]
                siblings = [name for name, (target, _) in table.items() if target == fused]
                start = sum(int(getattr(parent, name).weight.shape[0]) for name in siblings[:position])
                route = (f"{parent_path}.{fused}" if parent_path else fused, start, size)
        self._wrap(route[0])
        self._routes[layer_path] = route
        return route

    def _wrap(self, site_path: str) -> None:
        parent_path, _, leaf = site_path.rpartition(".")
        parent = self.model.get_submodule(parent_path) if parent_path else self.model
        layer = getattr(parent, leaf)
        if isinstance(layer, LoraSite):
            return
        if not isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)) or getattr(layer, "groups", 1) != 1:
            raise ValueError(f"{self.component} layer {site_path!r} is a {type(layer).__name__}, not a Linear or Conv2d")
        setattr(parent, leaf, LoraSite(layer, self, site_path))

    # -----------------------------------------------------------------------------------------
    # Calls

    @contextlib.contextmanager
    def rows(self, blocks: Sequence[RowBlock]) -> Iterator[bool]:
        """Within the block, calls of the model apply each block's adapters to its rows; yields
        whether any adapter is active. One block of 1 row broadcasts to every row of the call."""
        adapters: list[LoraAdapter] = []
        for _, chosen in blocks:
            for choice in chosen:
                if choice.adapter.targets(self.component) and choice.adapter not in adapters:
                    adapters.append(choice.adapter)
        if not adapters:
            yield False
            return
        with self._lock:
            self._active = _Active(blocks, adapters)
            try:
                yield True
            finally:
                self._active = None

    def site_layers(self) -> dict[str, int]:
        """Every site wrapped so far, with how many of the model's layers it stands for (3 for a
        fused QKV projection whose q, k and v some adapter targets)."""
        layers: dict[str, int] = {}
        for site_path, _, _ in self._routes.values():
            layers[site_path] = layers.get(site_path, 0) + 1
        return layers

    def update_for(self, site_path: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The active (down, up, per-row scale of each rank) for a site, None when none applies."""
        active = self._active
        if active is None:
            return None
        if active.plan is None:
            active.plan = self._plan(active.adapters)
            device = next(iter(active.plan.sites.values()))[0].device if active.plan.sites else None
            active.weights = self._row_weights(active.blocks, active.adapters, device)
        site = active.plan.sites.get(site_path)
        if site is None:
            return None
        down, up, owners = site
        row_scale = active.row_scales.get(site_path)
        if row_scale is None:
            assert active.weights is not None
            row_scale = active.weights.index_select(1, owners).to(down.dtype)
            active.row_scales[site_path] = row_scale
        return down, up, row_scale

    def _plan(self, adapters: list[LoraAdapter]) -> _Plan:
        key = tuple(id(adapter) for adapter in adapters)
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
            return plan
        parts: dict[str, list[tuple[int, torch.Tensor, torch.Tensor]]] = {}
        for index, adapter in enumerate(adapters):
            for key_path, (down, up) in adapter.layers.get(self.component, {}).items():
                parts.setdefault(key_path.split("#")[0], []).append((index, down, up))
        sites = {}
        for site_path, entries in parts.items():
            down = torch.cat([down for _, down, _ in entries])
            up = torch.cat([up for _, _, up in entries], dim=1)
            owners = torch.cat([torch.full((d.shape[0],), index, dtype=torch.long) for index, d, _ in entries])
            sites[site_path] = (down, up, owners.to(down.device))
        plan = _Plan(sites, tuple(adapters))
        self._plans[key] = plan
        if len(self._plans) > PLAN_CACHE_SIZE:
            self._plans.popitem(last=False)
        return plan

    def _row_weights(self, blocks: Sequence[RowBlock], adapters: list[LoraAdapter], device: torch.device | None) -> torch.Tensor:
        """[rows, K] scales, made once per mix of rows (the batch keeps one for many steps)."""
        key = tuple((rows, tuple((id(c.adapter), c.scale) for c in chosen)) for rows, chosen in blocks)
        key = (key, tuple(id(adapter) for adapter in adapters))
        if key == self._weights_key and self._weights is not None:
            return self._weights
        position = {id(adapter): index for index, adapter in enumerate(adapters)}
        table: list[list[float]] = []
        for rows, chosen in blocks:
            row = [0.0] * len(adapters)
            for choice in chosen:
                if id(choice.adapter) in position:
                    row[position[id(choice.adapter)]] += choice.scale
            table += [row] * rows
        host = torch.tensor(table, dtype=torch.float32)
        if device is not None and device.type == "cuda":
            host = host.pin_memory()
        weights = host.to(device or "cpu", non_blocking=True)
        # The adapters are held with the key (their ids are in it).
        self._weights_key, self._weights, self._weights_adapters = key, weights, tuple(adapters)
        return weights
