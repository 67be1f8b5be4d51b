"""Prompts into text conditioning, shared by every task: CLIP for Stable Diffusion 1.x / 2.x, both
CLIP encoders for XL, with recent prompts' embeddings cached.

Prompts longer than CLIP's window (77 tokens: 75 of text between the begin and end tokens) are
cut into 75-token chunks, each wrapped in the begin and end tokens and padded to 77 as a short
prompt is, encoded separately, and their hidden states concatenated along the sequence, as
Automatic1111 and compel do; the UNet's cross-attention takes any sequence length. Every prompt of
a run is brought to the same number of chunks (the negatives too) with chunks of the empty prompt.
SDXL's pooled embedding comes from the first chunk. Without chunking a long prompt is cut to its
first 75 tokens, and `truncated_prompts` tells which were, so that the caller can say so. A prompt
takes at most MAX_PROMPT_CHUNKS chunks; `too_long` tells which are cut to those.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from sdserve_backend.pipelines.components import DiffusionComponents
from sdserve_backend.pipelines.prompt_cache import PromptCache

if TYPE_CHECKING:
    from sdserve_backend.pipelines.lora_layers import ChosenLora
    from sdserve_backend.pipelines.lora_library import LoraLibrary

# Prompts whose text embeddings are kept (SDXL: ~0.3 MB each in float16).
DEFAULT_PROMPT_CACHE_SIZE = 256
# Text kept per token of the tokenizer's length before tokenizing: CLIP's longest tokens are far
# shorter, so the cut never changes the tokens the model sees, only the work spent on the rest.
MAX_CHARS_PER_TOKEN = 32
# The most chunks of one prompt: 600 tokens of text, well past the prompts people write, while
# the UNet's cross-attention (and the memory it takes) grows with every chunk.
MAX_PROMPT_CHUNKS = 8


@dataclass
class PromptEmbeddings:
    """Text conditioning for a batch; the negative halves are None without guidance."""

    positive: torch.Tensor
    negative: torch.Tensor | None
    # SDXL only: the second encoder's projected pooled output.
    pooled_positive: torch.Tensor | None = None
    pooled_negative: torch.Tensor | None = None


class PromptEncoder:
    """Text embeddings for prompts and negative prompts over loaded `DiffusionComponents`."""

    def __init__(self, components: DiffusionComponents, cache_size: int = DEFAULT_PROMPT_CACHE_SIZE,
                 loras: LoraLibrary | None = None) -> None:
        self.components = components
        self.cache = PromptCache(cache_size)
        # Text-encoder LoRAs of a request change its embeddings: they are part of the cache key.
        self.loras = loras
        self._lora_key = ""

    @property
    def tokenizers(self) -> list[Any]:
        parts = self.components
        return [tokenizer for tokenizer in (parts.tokenizer, parts.tokenizer_2) if tokenizer is not None]

    def chunk_count(self, texts: Iterable[str], chunked: bool = True) -> int:
        """The chunks each text of one run is encoded in: enough for the longest, up to
        MAX_PROMPT_CHUNKS (1 unchunked)."""
        if not chunked:
            return 1
        longest = max((len(_chunks(tokenizer, text)) for text in texts for tokenizer in self.tokenizers), default=1)
        return min(longest, MAX_PROMPT_CHUNKS)

    def truncated_prompts(self, texts: Iterable[str]) -> list[str]:
        """The texts that do not fit one chunk (what an unchunked encoding cuts)."""
        tokenizer = self.tokenizers[0]
        return [text for text in texts if len(_chunks(tokenizer, text, 1)) > 1]

    def too_long(self, texts: Iterable[str]) -> list[str]:
        """The texts that do not fit MAX_PROMPT_CHUNKS chunks."""
        return [text for text in texts
                if any(len(_chunks(tokenizer, text)) > MAX_PROMPT_CHUNKS for tokenizer in self.tokenizers)]

    @torch.inference_mode()
    def encode(
        self,
        prompts: list[str],
        negative_prompts: list[str | None],
        classifier_free_guidance: bool,
        chunked: bool = True,
        loras: Sequence[ChosenLora] = (),
    ) -> PromptEmbeddings:
        """Text embeddings for `prompts`, plus those of the negatives when guidance is on, with the
        text-encoder parts of `loras` applied."""
        if not loras or self.loras is None:
            return self._encode(prompts, negative_prompts, classifier_free_guidance, chunked)
        with self.loras.text_encoders(loras) as key:
            self._lora_key = key
            try:
                return self._encode(prompts, negative_prompts, classifier_free_guidance, chunked)
            finally:
                self._lora_key = ""

    def _encode(
        self, prompts: list[str], negative_prompts: list[str | None], classifier_free_guidance: bool, chunked: bool
    ) -> PromptEmbeddings:
        negatives = [text or "" for text in negative_prompts]
        chunks = self.chunk_count(prompts + (negatives if classifier_free_guidance else []), chunked)
        if self.components.is_sdxl:
            return self._encode_sdxl(prompts, negative_prompts, classifier_free_guidance, chunks)
        positive = self._encode_with_clip(prompts, chunks)
        # Stable Diffusion 1.x / 2.x: no negative prompt means the empty prompt.
        negative = self._encode_with_clip(negatives, chunks) if classifier_free_guidance else None
        return PromptEmbeddings(positive=positive, negative=negative)

    def _cached(self, texts: list[str], chunks: int, encode: Any) -> tuple[torch.Tensor, ...]:
        # One text's embedding depends on the chunks it is padded to and the text-encoder LoRAs
        # applied: all make the key.
        prefix = f"{chunks}:{self._lora_key}:" if self._lora_key else f"{chunks}:"
        keys = {f"{prefix}{text}": text for text in texts}
        return self.cache.encode(list(f"{prefix}{text}" for text in texts),
                                 lambda batch: encode([keys[key] for key in batch], chunks))

    def _encode_with_clip(self, texts: list[str], chunks: int) -> torch.Tensor:
        """Stable Diffusion 1.x / 2.x: the text encoder's last hidden state."""
        return self._cached(texts, chunks, lambda batch, count: (self._run_clip(batch, count),))[0]

    def _run_clip(self, texts: list[str], chunks: int) -> torch.Tensor:
        tokenizer, encoder = self.components.tokenizer, self.components.text_encoder
        token_ids, attention_mask = _chunk_rows(tokenizer, texts, chunks)
        mask = attention_mask.to(self.components.device) if getattr(encoder.config, "use_attention_mask", False) else None
        hidden_states = encoder(token_ids.to(self.components.device), attention_mask=mask)[0]
        return _join_chunks(hidden_states, len(texts)).to(dtype=encoder.dtype)

    def _encode_sdxl(
        self, prompts: list[str], negative_prompts: list[str | None], classifier_free_guidance: bool, chunks: int
    ) -> PromptEmbeddings:
        positive, pooled_positive = self._encode_with_both_clips(prompts, chunks)
        if not classifier_free_guidance:
            return PromptEmbeddings(positive=positive, negative=None, pooled_positive=pooled_positive)

        zeroed = [text is None and self.components.force_zeros_for_empty_prompt for text in negative_prompts]
        if all(zeroed):
            negative, pooled_negative = torch.zeros_like(positive), torch.zeros_like(pooled_positive)
        else:
            negative, pooled_negative = self._encode_with_both_clips([text or "" for text in negative_prompts], chunks)
            if any(zeroed):
                keep = torch.tensor([not z for z in zeroed], device=positive.device, dtype=positive.dtype)
                negative = negative * keep.view(-1, 1, 1)
                pooled_negative = pooled_negative * keep.view(-1, 1)
        return PromptEmbeddings(
            positive=positive, negative=negative, pooled_positive=pooled_positive, pooled_negative=pooled_negative
        )

    def _encode_with_both_clips(self, texts: list[str], chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
        """SDXL: both encoders' penultimate hidden states side by side (the refiner: the second's
        alone), and the second's pooled output."""
        hidden_states, pooled = self._cached(texts, chunks, self._run_both_clips)
        return hidden_states, pooled

    def _run_both_clips(self, texts: list[str], chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
        parts = self.components
        assert parts.tokenizer_2 is not None and parts.text_encoder_2 is not None
        hidden_states: list[torch.Tensor] = []
        pooled = torch.empty(0)
        for tokenizer, encoder in ((parts.tokenizer, parts.text_encoder), (parts.tokenizer_2, parts.text_encoder_2)):
            if encoder is None:
                continue
            token_ids, _ = _chunk_rows(tokenizer, texts, chunks)
            output = encoder(token_ids.to(parts.device), output_hidden_states=True)
            hidden_states.append(_join_chunks(output.hidden_states[-2], len(texts)))
            # The pooled embedding comes from the last encoder that has a projection, and of a
            # long prompt from its first chunk.
            if output[0].ndim == 2:
                pooled = output[0].view(len(texts), chunks, -1)[:, 0]
        dtype = parts.text_encoder_2.dtype
        return torch.cat(hidden_states, dim=-1).to(dtype=dtype), pooled.to(dtype=dtype)


def _chunks(tokenizer: Any, text: str, max_chunks: int = MAX_PROMPT_CHUNKS) -> list[list[int]]:
    """The text's token ids (no begin/end tokens) in chunks that fit the window; one, maybe empty,
    at least. Only the text `max_chunks` chunks can hold is tokenized, so past those chunks the
    count tells only that there are more."""
    # The tokenizer would split the whole text, however long: cutting it first bounds the work.
    text = text[:tokenizer.model_max_length * MAX_CHARS_PER_TOKEN * max_chunks]
    ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
    size = tokenizer.model_max_length - 2
    return [ids[start:start + size] for start in range(0, len(ids), size)] or [[]]


def _chunk_rows(tokenizer: Any, texts: list[str], chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask [len(texts) * chunks, 77]: per text its first `chunks` chunks,
    then empty ones, each as the tokenizer pads a short prompt (begin, ids, end, padding)."""
    length = tokenizer.model_max_length
    rows: list[list[int]] = []
    masks: list[list[int]] = []
    for text in texts:
        pieces = _chunks(tokenizer, text, chunks)[:chunks]
        for piece in pieces + [[]] * (chunks - len(pieces)):
            row = [tokenizer.bos_token_id, *piece, tokenizer.eos_token_id]
            masks.append([1] * len(row) + [0] * (length - len(row)))
            rows.append(row + [tokenizer.pad_token_id] * (length - len(row)))
    return torch.tensor(rows, dtype=torch.long), torch.tensor(masks, dtype=torch.long)


def _join_chunks(hidden_states: torch.Tensor, texts: int) -> torch.Tensor:
    """[texts * chunks, 77, D] -> [texts, chunks * 77, D]: each text's chunks one after another."""
    return hidden_states.reshape(texts, -1, hidden_states.shape[-1])
