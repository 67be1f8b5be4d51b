"""Text embeddings of recent prompts, so repeated prompts skip the text encoders.

Users re-run a prompt with other seeds and settings, and every guided SD 1.x/2.x request encodes
the empty negative prompt: on a GPU the encoders' few milliseconds per call stall the batch that
is denoising while a request is admitted. The text encoders treat prompts independently, so a
cached prompt's embedding is the one a fresh batch would compute (on a GPU, up to the rounding
that differs between batch sizes).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch

Embeddings = tuple[torch.Tensor, ...]
# Encodes a batch of texts into one or more tensors whose first dimension is the text.
BatchEncoder = Callable[[list[str]], Embeddings]


class PromptCache:
    """The embeddings of up to `capacity` texts, least recently used evicted first; 0 turns it off."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"the prompt cache's capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[str, Embeddings] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def encode(self, texts: Sequence[str], encode_batch: BatchEncoder) -> Embeddings:
        """`encode_batch(texts)`, computed only for the texts not cached (each once, in one batch)."""
        if self.capacity == 0 or not texts:
            return encode_batch(list(texts))
        with self._lock:
            missing = list(dict.fromkeys(text for text in texts if text not in self._entries))
            fresh: dict[str, Embeddings] = {}
            if missing:
                outputs = encode_batch(missing)
                # Each row cloned, so that an entry does not keep its whole batch alive.
                fresh = {text: tuple(output[index].clone() for output in outputs) for index, text in enumerate(missing)}
            rows = [fresh[text] if text in fresh else self._touch(text) for text in texts]
            for text, row in fresh.items():
                self._entries[text] = row
                if len(self._entries) > self.capacity:
                    self._entries.popitem(last=False)
        return tuple(torch.stack([row[part] for row in rows]) for part in range(len(rows[0])))

    def _touch(self, text: str) -> Embeddings:
        self._entries.move_to_end(text)
        return self._entries[text]
