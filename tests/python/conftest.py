"""Shared fixtures: the built-in tiny models, made once per test session in a temporary folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from sdserve_backend.pipelines import TextToImagePipeline, load_components
from sdserve_backend.tiny_model import make_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"sd": folder, "sdxl": folder}, each a complete tiny diffusers model made with seed 0."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {variant: make_tiny_model(root / variant, variant, seed=0) for variant in ("sd", "sdxl")}


@pytest.fixture(scope="session")
def load_tiny_pipeline(tiny_model_dirs: dict[str, Path]) -> Callable[[str], TextToImagePipeline]:
    """Loads a variant's tiny model into a CPU float32 pipeline, once per session."""
    loaded: dict[str, TextToImagePipeline] = {}

    def load(variant: str) -> TextToImagePipeline:
        if variant not in loaded:
            components = load_components(tiny_model_dirs[variant], torch.device("cpu"), torch.float32)
            loaded[variant] = TextToImagePipeline(components)
        return loaded[variant]

    return load
