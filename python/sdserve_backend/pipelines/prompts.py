"""Prompts into text conditioning, shared by every task: CLIP for Stable Diffusion 1.x / 2.x, both
CLIP encoders for XL, with recent prompts' embeddings cached."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sdserve_backend.pipelines.components import DiffusionComponents
from sdserve_backend.pipelines.prompt_cache import PromptCache

# Prompts whose text embeddings are kept (SDXL: ~0.3 MB each in float16).
DEFAULT_PROMPT_CACHE_SIZE = 256
# Text kept per token of the tokenizer's length before tokenizing: CLIP's longest tokens are far
# shorter, so the cut never changes the tokens the model sees, only the work spent on the rest.
MAX_CHARS_PER_TOKEN = 32


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

    def __init__(self, components: DiffusionComponents, cache_size: int = DEFAULT_PROMPT_CACHE_SIZE) -> None:
        self.components = components
        self.cache = PromptCache(cache_size)

    @torch.inference_mode()
    def encode(
        self, prompts: list[str], negative_prompts: list[str | None], classifier_free_guidance: bool
    ) -> PromptEmbeddings:
        """Text embeddings for `prompts`, plus those of the negatives when guidance is on."""
        if self.components.is_sdxl:
            return self._encode_sdxl(prompts, negative_prompts, classifier_free_guidance)
        positive = self._encode_with_clip(prompts)
        # Stable Diffusion 1.x / 2.x: no negative prompt means the empty prompt.
        negative = self._encode_with_clip([text or "" for text in negative_prompts]) if classifier_free_guidance else None
        return PromptEmbeddings(positive=positive, negative=negative)

    def _encode_with_clip(self, texts: list[str]) -> torch.Tensor:
        """Stable Diffusion 1.x / 2.x: the text encoder's last hidden state."""
        return self.cache.encode(texts, lambda batch: (self._run_clip(batch),))[0]

    def _run_clip(self, texts: list[str]) -> torch.Tensor:
        tokenizer, encoder = self.components.tokenizer, self.components.text_encoder
        tokens = _tokenize(tokenizer, texts)
        attention_mask = None
        if getattr(encoder.config, "use_attention_mask", False):
            attention_mask = tokens.attention_mask.to(self.components.device)
        hidden_states = encoder(tokens.input_ids.to(self.components.device), attention_mask=attention_mask)[0]
        return hidden_states.to(dtype=encoder.dtype)

    def _encode_sdxl(
        self, prompts: list[str], negative_prompts: list[str | None], classifier_free_guidance: bool
    ) -> PromptEmbeddings:
        positive, pooled_positive = self._encode_with_both_clips(prompts)
        if not classifier_free_guidance:
            return PromptEmbeddings(positive=positive, negative=None, pooled_positive=pooled_positive)

        zeroed = [text is None and self.components.force_zeros_for_empty_prompt for text in negative_prompts]
        if all(zeroed):
            negative, pooled_negative = torch.zeros_like(positive), torch.zeros_like(pooled_positive)
        else:
            negative, pooled_negative = self._encode_with_both_clips([text or "" for text in negative_prompts])
            if any(zeroed):
                keep = torch.tensor([not z for z in zeroed], device=positive.device, dtype=positive.dtype)
                negative = negative * keep.view(-1, 1, 1)
                pooled_negative = pooled_negative * keep.view(-1, 1)
        return PromptEmbeddings(
            positive=positive, negative=negative, pooled_positive=pooled_positive, pooled_negative=pooled_negative
        )

    def _encode_with_both_clips(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """SDXL: both encoders' penultimate hidden states side by side, and the second's pooled output."""
        hidden_states, pooled = self.cache.encode(texts, self._run_both_clips)
        return hidden_states, pooled

    def _run_both_clips(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = self.components
        assert parts.tokenizer_2 is not None and parts.text_encoder_2 is not None
        hidden_states: list[torch.Tensor] = []
        pooled = torch.empty(0)
        for tokenizer, encoder in ((parts.tokenizer, parts.text_encoder), (parts.tokenizer_2, parts.text_encoder_2)):
            token_ids = _tokenize(tokenizer, texts).input_ids.to(parts.device)
            output = encoder(token_ids, output_hidden_states=True)
            hidden_states.append(output.hidden_states[-2])
            # The pooled embedding comes from the last encoder that has a projection.
            if output[0].ndim == 2:
                pooled = output[0]
        dtype = parts.text_encoder_2.dtype
        return torch.cat(hidden_states, dim=-1).to(dtype=dtype), pooled.to(dtype=dtype)


def _tokenize(tokenizer: Any, texts: list[str]) -> Any:
    # The tokenizer keeps only its first model_max_length tokens but would split the whole text
    # first: cutting the text beforehand bounds its time and memory whatever the prompt's length.
    limit = tokenizer.model_max_length * MAX_CHARS_PER_TOKEN
    texts = [text[:limit] for text in texts]
    # Padded to the tokenizer's full length (77 for CLIP), as the models were trained.
    return tokenizer(
        texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
