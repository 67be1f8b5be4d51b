"""A CLIP tokenizer whose byte-pair merges are learned from the caption vocabulary.

CLIP's tokenizer splits text into words, maps each byte to a printable character and applies
byte-pair merges in rank order, with "</w>" marking a word's end. The merges here are learned
from the caption words until every one of them is a single token; any other text still encodes,
character by character, because the vocabulary holds the whole byte alphabet (plain and
word-final). The learning is Sennrich et al.'s byte-pair encoding (ACL 2016) with ties broken by
the pair's text: the `tokenizers` trainer breaks ties in an order that changes from run to run,
which would renumber tokens between a training run and its export.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from transformers import CLIPTokenizer

from .vocabulary import CAPTION_WORDS

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
# Captions are at most ~20 tokens; a short context keeps the text encoder cheap.
MAX_LENGTH = 32


def byte_level_alphabet() -> list[str]:
    """The 256 printable characters that stand for the 256 byte values (as CLIP maps them)."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    alphabet: list[str] = []
    next_free = 256
    for byte in range(256):
        if byte in printable:
            alphabet.append(chr(byte))
        else:
            alphabet.append(chr(next_free))
            next_free += 1
    return alphabet


def learn_merges(words: tuple[str, ...] = CAPTION_WORDS) -> list[tuple[str, str]]:
    """Byte-pair merges, in rank order, after which each of `words` is a single token."""
    segments = [[*word[:-1], word[-1] + END_OF_WORD] for word in words]
    merges: list[tuple[str, str]] = []
    while True:
        counts = Counter(pair for segment in segments for pair in zip(segment, segment[1:], strict=False))
        if not counts:
            return merges
        # The most frequent pair; among equals, the first by text, so every run learns the same.
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        segments = [_merge(segment, best) for segment in segments]


def _merge(segment: list[str], pair: tuple[str, str]) -> list[str]:
    merged: list[str] = []
    index = 0
    while index < len(segment):
        if index + 1 < len(segment) and (segment[index], segment[index + 1]) == pair:
            merged.append(segment[index] + segment[index + 1])
            index += 2
        else:
            merged.append(segment[index])
            index += 1
    return merged


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Token -> id: the alphabet, the alphabet as word ends, the merged tokens, then the specials."""
    alphabet = byte_level_alphabet()
    tokens = alphabet + [char + END_OF_WORD for char in alphabet]
    for left, right in merges:
        merged = left + right
        if merged not in tokens:
            tokens.append(merged)
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: index for index, token in enumerate(tokens)}


def write_tokenizer(folder: Path, merges: list[tuple[str, str]] | None = None) -> CLIPTokenizer:
    """Writes vocab.json, merges.txt and tokenizer_config.json to `folder`; returns the tokenizer.

    `merges` defaults to those learned from the caption words (a checkpoint passes its own).
    """
    merges = learn_merges() if merges is None else merges
    vocab = build_vocab(merges)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():  # e.g. a tokenizer.json that save_pretrained derived
        stale.unlink()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{left} {right}\n" for left, right in merges), encoding="utf-8"
    )
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return CLIPTokenizer.from_pretrained(folder)
