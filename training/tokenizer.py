"""A CLIP tokenizer whose byte-pair merges are learned from the caption vocabulary.

CLIP's tokenizer splits text into words, maps each byte to a printable character and applies
byte-pair merges in rank order, with "</w>" marking a word's end. The merges here are trained
with the `tokenizers` library on the caption words, enough of them that every caption word
becomes one token; any other text still encodes, character by character, because the vocabulary
holds the whole byte alphabet (plain and word-final).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
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
    alphabet = byte_level_alphabet()
    tokenizer = Tokenizer(models.BPE(end_of_word_suffix=END_OF_WORD))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=10_000,  # more than the words can ever merge into: training stops when all are whole
        min_frequency=1,
        show_progress=False,
        end_of_word_suffix=END_OF_WORD,
        initial_alphabet=alphabet,
    )
    tokenizer.train_from_iterator(list(words), trainer=trainer)
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    return [tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge) for merge in merges]


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


def write_tokenizer(folder: Path) -> CLIPTokenizer:
    """Writes vocab.json, merges.txt and tokenizer_config.json to `folder`; returns the tokenizer."""
    merges = learn_merges()
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
