"""The built-in tiny models: deterministic, complete, and loadable by diffusers' own pipelines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import EulerDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
from transformers import CLIPTextModelWithProjection

from sdserve_backend.tiny_model import (
    MARKER_FILE,
    build_tokenizer_vocab,
    byte_level_alphabet,
    main,
    make_tiny_model,
)


def weight_files(folder: Path) -> dict[str, bytes]:
    """The model's weights (its tiny LoRAs left out: their weights do not follow the seed)."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*.safetensors"))
            if path.parent.name != "loras"}


@pytest.mark.parametrize("variant", ["sd", "sdxl"])
def test_same_seed_writes_identical_weights_and_another_seed_does_not(
    variant: str, tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    again = make_tiny_model(tmp_path / "again", variant, seed=0)
    other_seed = make_tiny_model(tmp_path / "other", variant, seed=1)

    first = weight_files(tiny_model_dirs[variant])
    assert len(first) == (4 if variant == "sdxl" else 3)
    assert weight_files(again) == first
    assert weight_files(other_seed).keys() == first.keys()
    assert all(weight_files(other_seed)[name] != first[name] for name in first)
    loras = sorted(path.name for path in (tiny_model_dirs[variant] / "loras").iterdir())
    assert loras == ["tiny_kohya.safetensors", "tiny_peft.safetensors", "tiny_unet_peft.safetensors"]


def test_rerun_on_a_complete_model_does_nothing_and_says_so(
    tiny_model_dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tiny_model_dirs["sd"]
    before = {path: path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()}

    assert main(["--out", str(folder), "--variant", "sd", "--seed", "0"]) == 0

    assert "already complete" in capsys.readouterr().out
    assert {path: path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()} == before


def test_writing_keeps_unrelated_files_and_replaces_another_variant(tmp_path: Path) -> None:
    folder = tmp_path / "1"
    folder.mkdir()
    (folder / "WEIGHTS.md").write_text("notes")
    make_tiny_model(folder, "sdxl", seed=0)

    make_tiny_model(folder, "sd", seed=0)

    assert (folder / "WEIGHTS.md").read_text() == "notes"
    assert not (folder / "text_encoder_2").exists()
    assert json.loads((folder / MARKER_FILE).read_text())["variant"] == "sd"


def test_tokenizer_vocab_is_the_byte_alphabet_plus_merges_and_specials() -> None:
    alphabet = byte_level_alphabet()
    vocab = build_tokenizer_vocab()

    assert len(set(alphabet)) == 256
    assert all(not char.isspace() and char.isprintable() for char in alphabet)
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert {"the</w>", "photo</w>", "<|startoftext|>", "<|endoftext|>"} <= vocab.keys()


def test_sd_model_loads_in_stable_diffusion_pipeline(tiny_model_dirs: dict[str, Path]) -> None:
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_model_dirs["sd"], local_files_only=True)

    assert isinstance(pipeline.scheduler, PNDMScheduler)
    assert pipeline.vae_scale_factor == 8
    assert pipeline.unet.config.sample_size * pipeline.vae_scale_factor == 128
    assert len(pipeline.unet.config.block_out_channels) == 2
    assert pipeline.tokenizer.model_max_length == 77
    token_ids = pipeline.tokenizer("The photo").input_ids
    vocab = build_tokenizer_vocab()
    assert token_ids == [vocab["<|startoftext|>"], vocab["the</w>"], vocab["photo</w>"], vocab["<|endoftext|>"]]
    image = pipeline(
        "a photo", num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert image.shape == (1, 128, 128, 3)


def test_sdxl_model_loads_in_stable_diffusion_xl_pipeline(tiny_model_dirs: dict[str, Path]) -> None:
    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_model_dirs["sdxl"], local_files_only=True)

    assert isinstance(pipeline.scheduler, EulerDiscreteScheduler)
    assert isinstance(pipeline.text_encoder_2, CLIPTextModelWithProjection)
    assert pipeline.unet.config.addition_embed_type == "text_time"
    assert pipeline.default_sample_size * pipeline.vae_scale_factor == 128
    assert pipeline.tokenizer_2.model_max_length == 77
