"""Text embeddings of recent prompts, so repeated prompts skip the text encoders.

Users re-run a prompt with other seeds and settings, and every guided SD 1.x/2.x request encodes
the empty negative prompt: on a GPU the encoders' few milliseconds per call stall the batch that
is denoising while a request is admitted. The text encoders treat prompts independently, so a
cached prompt's embedding is the one a fresh batch would compute (on a GPU, up to the rounding
that differs between batch sizes).
"""

from __future__ import annotations

import hashlib
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
        self._entries: OrderedDict[bytes, Embeddings] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def encode(self, texts: Sequence[str], encode_batch: BatchEncoder) -> Embeddings:
        """`encode_batch(texts)`, computed only for the texts not cached (each once, in one batch)."""
        if self.capacity == 0 or not texts:
            return encode_batch(list(texts))
        keys = [prompt_key(text) for text in texts]
        with self._lock:
            missing = list(dict.fromkeys((key, text) for key, text in zip(keys, texts) if key not in self._entries))
            fresh: dict[bytes, Embeddings] = {}
            if missing:
                outputs = encode_batch([text for _, text in missing])
                # Each row cloned, so that an entry does not keep its whole batch alive.
                fresh = {key: tuple(output[index].clone() for output in outputs) for index, (key, _) in enumerate(missing)}
            rows = [fresh[key] if key in fresh else self._touch(key) for key in keys]
            for key, row in fresh.items():
                self._entries[key] = row
                if len(self._entries) > self.capacity:
                    self._entries.popitem(last=False)
        return tuple(torch.stack([row[part] for row in rows]) for part in range(len(rows[0])))

    def __contains__(self, text: str) -> bool:
        return prompt_key(text) in self._entries

    def _touch(self, key: bytes) -> Embeddings:
        self._entries.move_to_end(key)
        return self._entries[key]


def prompt_key(text: str) -> bytes:
    """The cache key of a prompt: its SHA-256, so the cache holds no prompt texts, however long."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
