"""Text embeddings of repeated prompts come from the cache, equal to a fresh encoding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from sdserve_backend.pipelines import TextToImagePipeline, load_components
from sdserve_backend.pipelines.prompt_cache import PromptCache
from sdserve_backend.pipelines.prompts import MAX_CHARS_PER_TOKEN, MAX_PROMPT_CHUNKS


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def variant_components(request: pytest.FixtureRequest, tiny_model_dirs: dict[str, Path]) -> Any:
    return load_components(tiny_model_dirs[request.param], torch.device("cpu"), torch.float32)


def count_encoded_rows(encoder: torch.nn.Module) -> list[int]:
    """The number of texts each call of `encoder` received (a forward hook on the real encoder)."""
    rows: list[int] = []
    encoder.register_forward_hook(lambda module, args, kwargs_or_output, *rest: rows.append(args[0].shape[0]))
    return rows


def test_repeated_prompts_skip_the_text_encoder_and_embed_as_before(variant_components: Any) -> None:
    cached = TextToImagePipeline(variant_components, prompt_cache_size=8)
    uncached = TextToImagePipeline(variant_components, prompt_cache_size=0)
    rows = count_encoded_rows(variant_components.text_encoder)
    try:
        first = cached.prompt_encoder.encode(["a cat", "a dog"], [None, None], classifier_free_guidance=True)
        second = cached.prompt_encoder.encode(["a dog", "a bird", "a dog"], [None, "blurry", None], classifier_free_guidance=True)
        encoded_by_cache = list(rows)
        expected = uncached.prompt_encoder.encode(["a dog", "a bird", "a dog"], [None, "blurry", None], classifier_free_guidance=True)
    finally:
        variant_components.text_encoder._forward_hooks.clear()

    for got, want in ((second.positive, expected.positive), (second.negative, expected.negative),
                      (second.pooled_positive, expected.pooled_positive), (second.pooled_negative, expected.pooled_negative)):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second.positive[0], first.positive[1], rtol=0, atol=0)
    if variant_components.is_sdxl:
        # "a cat", "a dog"; then "a bird"; then the negatives "" (zeroed afterwards) and "blurry".
        assert encoded_by_cache == [2, 1, 2]
    else:
        # Positives, then the empty negative once; then "a bird" and "blurry" only.
        assert encoded_by_cache == [2, 1, 1, 1]


def test_the_least_recently_used_prompt_is_evicted_first() -> None:
    encoded: list[list[str]] = []

    def encode(texts: list[str]) -> tuple[torch.Tensor]:
        encoded.append(texts)
        return (torch.tensor([[float(len(text))] for text in texts]),)

    cache = PromptCache(2)
    cache.encode(["a", "bb"], encode)
    cache.encode(["a"], encode)  # "a" is now the most recent
    cache.encode(["ccc"], encode)  # evicts "bb"
    (values,) = cache.encode(["bb", "a", "ccc"], encode)

    assert encoded == [["a", "bb"], ["ccc"], ["bb"]]
    assert values.flatten().tolist() == [2.0, 1.0, 3.0]
    assert len(cache) == 2


def test_a_cache_of_size_zero_encodes_every_time() -> None:
    calls: list[list[str]] = []
    cache = PromptCache(0)
    for _ in range(2):
        cache.encode(["same"], lambda texts: (calls.append(texts), torch.zeros((len(texts), 1)))[1:])
    assert calls == [["same"], ["same"]]
    with pytest.raises(ValueError, match="capacity must be >= 0"):
        PromptCache(-1)


def test_the_cache_keys_prompts_by_hash_and_keeps_no_prompt_text() -> None:
    cache = PromptCache(4)
    huge = "a castle " * 200_000
    cache.encode([huge, "a cat"], lambda texts: (torch.zeros(len(texts), 1),))
    assert huge in cache and "a cat" in cache
    assert all(isinstance(key, bytes) and len(key) == 32 for key in cache._entries)


def test_a_long_prompt_is_cut_before_the_tokenizer_sees_it(variant_components: Any) -> None:
    pipeline = TextToImagePipeline(variant_components, prompt_cache_size=0)
    tokenizer = variant_components.tokenizer
    seen: list[int] = []
    original = type(tokenizer).__call__

    def recording(self: Any, texts: Any, *args: Any, **kwargs: Any) -> Any:
        seen.extend(len(text) for text in ([texts] if isinstance(texts, str) else texts))
        return original(self, texts, *args, **kwargs)

    limit = tokenizer.model_max_length * MAX_CHARS_PER_TOKEN
    huge = "a castle on a hill " * 500_000
    type(tokenizer).__call__ = recording
    try:
        long_embedding = pipeline.prompt_encoder.encode([huge], [None], classifier_free_guidance=False, chunked=False).positive
        short_embedding = pipeline.prompt_encoder.encode([huge[:limit]], [None], classifier_free_guidance=False, chunked=False).positive
        seen_unchunked = list(seen)
        chunked_embedding = pipeline.prompt_encoder.encode([huge], [None], classifier_free_guidance=False).positive
    finally:
        type(tokenizer).__call__ = original
    assert 0 < max(seen_unchunked) <= limit
    torch.testing.assert_close(long_embedding, short_embedding, rtol=0, atol=0)
    # Chunked, it reads only what its most chunks can hold.
    assert max(seen) <= limit * MAX_PROMPT_CHUNKS
    assert chunked_embedding.shape[1] == tokenizer.model_max_length * MAX_PROMPT_CHUNKS
