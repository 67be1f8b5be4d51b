"""The LoRAs a model may use: the `.safetensors` files of one folder, by plain name, loaded on
first use and kept (least recently used dropped past `capacity`), and applied per row of the UNet
and per request of the text encoders (`lora_layers.ModelLoras`).

A request names adapters as `[{"name": ..., "scale": ...}]` (request parameter `loras`, a JSON
text) and/or in its prompt as Automatic1111 does, `<lora:name:0.8>` (the tag is taken out of the
prompt). Names are file names without the `.safetensors` suffix and without any folder: nothing
outside the folder can be named.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sdserve_backend.pipelines.components import DiffusionComponents
from sdserve_backend.pipelines.lora_files import read_lora_file
from sdserve_backend.pipelines.lora_layers import ChosenLora, LoraAdapter, ModelLoras, RowBlock
from sdserve_backend.pipelines.lora_slots import DEFAULT_MAX_RANK, DEFAULT_SLOTS, LoraSlots
from sdserve_backend.quoting import quoted

SUFFIX = ".safetensors"
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+\- ]{0,127}$")
PROMPT_TAG = re.compile(r"<lora:([^:>]*)(?::([^:>]*))?>")
MAX_LORAS = 8
MAX_SCALE = 10.0
DEFAULT_CAPACITY = 16

# Requested adapters before loading: (name, scale).
LoraRequest = tuple[tuple[str, float], ...]


def parse_loras_parameter(value: Any) -> LoraRequest:
    """The request parameter `loras`: a JSON text (or already a list) of `{"name", "scale"}`
    objects, scale 1 when absent. Raises ValueError naming what is wrong."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"parameter 'loras' must be a JSON list of {{\"name\": ..., \"scale\": ...}}, "
                             f"got {quoted(value)} ({error.msg})") from None
    if not isinstance(value, list):
        raise ValueError(f"parameter 'loras' must be a list of {{\"name\": ..., \"scale\": ...}}, got {quoted(value)}")
    chosen: list[tuple[str, float]] = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or set(item) - {"name", "scale"}:
            raise ValueError(f"parameter 'loras': each entry must be {{\"name\": <text>, \"scale\": <number>}}, got {quoted(item)}")
        chosen.append((item["name"], _scale(item.get("scale", 1.0), item["name"])))
    return _merged(chosen)


def take_prompt_tags(prompts: Sequence[str]) -> tuple[list[str], LoraRequest]:
    """Automatic1111's `<lora:name>` / `<lora:name:scale>` tags: the prompts without them, and the
    adapters they ask for."""
    found: list[tuple[str, float]] = []
    cleaned = []
    for prompt in prompts:
        for name, scale in PROMPT_TAG.findall(prompt):
            found.append((name, _scale(scale if scale != "" else 1.0, name)))
        cleaned.append(PROMPT_TAG.sub("", prompt) if found else prompt)
    return cleaned, _merged(found)


def merge_requests(*requests: LoraRequest) -> LoraRequest:
    return _merged([item for request in requests for item in request])


def _merged(items: list[tuple[str, float]]) -> LoraRequest:
    chosen: dict[str, float] = {}
    for name, scale in items:
        if name in chosen and chosen[name] != scale:
            raise ValueError(f"LoRA {quoted(name)} is asked for twice, with scales {chosen[name]} and {scale}")
        chosen[name] = scale
    if len(chosen) > MAX_LORAS:
        raise ValueError(f"a request may use at most {MAX_LORAS} LoRAs, got {len(chosen)}")
    return tuple(chosen.items())


def _scale(value: Any, name: str) -> float:
    try:
        scale = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        scale = math.nan
    if not math.isfinite(scale) or abs(scale) > MAX_SCALE:
        raise ValueError(f"LoRA {quoted(name)}: scale must be a number from {-MAX_SCALE:g} to {MAX_SCALE:g}, got {quoted(value)}")
    return scale


class LoraLibrary:
    """The adapters of one folder for one loaded model."""

    def __init__(self, components: DiffusionComponents, folder: Path | None, capacity: int = DEFAULT_CAPACITY,
                 slots: int = DEFAULT_SLOTS, max_rank: int = DEFAULT_MAX_RANK) -> None:
        """`slots` and `max_rank`: the slot tables of the engine's LoRA graphs (`lora_slots.py`),
        how many adapter sets they hold (one stays empty; 0: no LoRA graphs, rows with LoRAs run
        the model eagerly) and the largest rank per layer they take."""
        self.components = components
        self.folder = Path(folder) if folder is not None else None
        self.capacity = max(1, capacity)
        self.slot_count = slots
        self.max_rank = max_rank
        self._loaded: OrderedDict[str, LoraAdapter] = OrderedDict()
        self._lock = threading.Lock()
        self.models: dict[str, ModelLoras] = {}
        for component in ("unet", "text_encoder", "text_encoder_2"):
            model = getattr(components, component)
            if model is not None:
                # The engine's runner stands in for the UNet; the layers are its model's.
                self.models[component] = ModelLoras.of(model.model if hasattr(model, "run_eager") else model, component)

    def available(self) -> list[str]:
        """The names of the folder's LoRA files."""
        if self.folder is None or not self.folder.is_dir():
            return []
        return sorted(path.name[: -len(SUFFIX)] for path in self.folder.glob(f"*{SUFFIX}")
                      if path.is_file() and NAME.match(path.name[: -len(SUFFIX)]))

    def choose(self, requested: LoraRequest) -> tuple[ChosenLora, ...]:
        """The adapters a request asked for, loaded. Raises ValueError for a name that is not a
        plain name of a file in the folder (naming the ones there are) or a file that is no LoRA
        of this model."""
        return tuple(ChosenLora(self.load(name), scale) for name, scale in requested)

    def load(self, name: str) -> LoraAdapter:
        path = self._path(name)
        stat = path.stat()
        identity = f"{name}@{stat.st_mtime_ns}:{stat.st_size}"
        with self._lock:
            adapter = self._loaded.get(name)
            if adapter is not None and adapter.identity == identity:
                self._loaded.move_to_end(name)
                return adapter
            parts = self.components
            layers = read_lora_file(path, {component: loras.model for component, loras in self.models.items()})
            adapter = LoraAdapter(name=name, identity=identity)
            for component, pairs in layers.items():
                model = self.models[component]
                dtype = next(model.model.parameters()).dtype
                adapter.layers[component] = model.prepare(pairs, parts.device, dtype)
            self._loaded[name] = adapter
            self._loaded.move_to_end(name)
            # Requests in flight keep their adapters; only the library forgets them.
            while len(self._loaded) > self.capacity:
                self._loaded.popitem(last=False)
            return adapter

    def _path(self, name: str) -> Path:
        if not isinstance(name, str) or not NAME.match(name) or ".." in name:
            raise ValueError(f"LoRA name {quoted(name)} must be a plain file name without {SUFFIX} (letters, digits, "
                             f"'_', '-', '.', '+', spaces; no folders); {self._listing()}")
        if self.folder is not None:
            path = self.folder / f"{name}{SUFFIX}"
            if path.is_file() and path.resolve().parent == self.folder.resolve():
                return path
        raise ValueError(f"LoRA {quoted(name)} is not known; {self._listing()}")

    def _listing(self) -> str:
        names = self.available()
        if names:
            return f"available: {', '.join(names)}"
        where = f"in {self.folder}" if self.folder is not None else "configured"
        return f"none are available (no {SUFFIX} files {where})"

    # -----------------------------------------------------------------------------------------
    # Applying

    @contextlib.contextmanager
    def unet_rows(self, blocks: Sequence[RowBlock]) -> Iterator[bool]:
        """UNet calls inside apply each block's adapters to its rows; yields whether any do."""
        with self.models["unet"].rows(blocks) as active:
            yield active

    @contextlib.contextmanager
    def unet_call(self, unet: Any, blocks: Sequence[RowBlock], graphs: bool = True) -> Iterator[bool]:
        """Calls of `unet` (the model, or the engine's runner standing in for it) inside apply each
        block's adapters to its rows; yields whether any do. On the engine's runner they run in its
        LoRA graphs, each row gathering its adapters from the slot tables, when the mix fits them
        (and `graphs`); otherwise the model runs eagerly, as the base graphs hold no adapters."""
        with self.unet_rows(blocks) as adapted:
            if not adapted or not hasattr(unet, "lora_rows"):
                yield adapted
                return
            slots = self.unet_slots() if graphs else None
            rows = slots.rows(blocks) if slots is not None else None
            with unet.lora_rows(slots, rows) if rows is not None else unet.eager():
                yield True

    def unet_slots(self) -> LoraSlots | None:
        """The UNet's slot tables (made at the first use; None when `slots` is 0)."""
        model = self.models["unet"]
        if model.slots is None and self.slot_count > 0:
            model.slots = LoraSlots(model, self.slot_count, self.max_rank)
        return model.slots

    @contextlib.contextmanager
    def text_encoders(self, chosen: Sequence[ChosenLora]) -> Iterator[str]:
        """Text encoder calls inside apply `chosen` to every text; yields what the embeddings
        depend on beyond the text ("" when no adapter touches the text encoders)."""
        touching = [choice for choice in chosen
                    if any(choice.adapter.targets(c) for c in ("text_encoder", "text_encoder_2"))]
        if not touching:
            yield ""
            return
        with contextlib.ExitStack() as stack:
            for component in ("text_encoder", "text_encoder_2"):
                if component in self.models:
                    stack.enter_context(self.models[component].rows([(1, touching)]))
            yield ";".join(f"{choice.adapter.identity}*{choice.scale!r}" for choice in touching)

