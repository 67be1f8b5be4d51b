"""`python -m sdserve_backend.engine.build`: build (or check) the GPU engine of one model version.

    python -m sdserve_backend.engine.build --model-dir model_repository/stable_diffusion_1_5 \
        --version 1 --model-config '<config.pbtxt as JSON>' [--engine-cache-dir DIR] [--force]

Loads the weights as the backend does, runs `engine.prepare` and prints each stage's time. On a
machine with no CUDA GPU there is nothing to build: it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from sdserve_backend.booleans import parse_bool
from sdserve_backend.engine.fp8 import parse_fp8_mode
from sdserve_backend.engine.prepare import EngineOptions, prepare_with_report
from sdserve_backend.pipelines.device import choose_placement

ENGINE_SUBDIR = "engine"


def is_forced(parameters: dict[str, str]) -> bool:
    """The `force_engine_build` config parameter as a boolean (empty means no)."""
    return parse_bool("force_engine_build", parameters.get("force_engine_build", ""), False, "config parameter")


def engine_options(parameters: dict[str, str]) -> EngineOptions:
    """The engine options a model config asks for: `engine_compile` turns on torch.compile; a
    default `cache_interval` over 1 captures the feature-caching graphs too (requests of a model
    whose config leaves it at 1 may still ask for caching: it then runs outside the graphs);
    `engine_fp8` "static" converts the UNet's transformer-block GEMMs to FP8 (`engine/fp8.py`)."""
    return EngineOptions(
        compile=parse_bool("engine_compile", parameters.get("engine_compile", ""), False, "config parameter"),
        feature_cache=_cache_interval(parameters) > 1,
        fp8=parse_fp8_mode(parameters.get("engine_fp8", "")),
    )


def _cache_interval(parameters: dict[str, str]) -> int:
    # Bad values are the settings' to report (read_model_defaults); here they mean "off".
    try:
        return int(str(parameters.get("cache_interval", "") or "1").strip())
    except ValueError:
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the GPU engine of one model version.")
    parser.add_argument("--model-dir", type=Path, required=True, help="the model's folder in the repository")
    parser.add_argument("--version", default="1", help="version folder (default 1)")
    parser.add_argument("--model-config", default="", help="the model config as JSON (default: {})")
    parser.add_argument("--engine-cache-dir", default="", help="the server's --engine-cache-dir (default: inside the version folder)")
    parser.add_argument("--force", action="store_true", help="rebuild even when the engine is current")
    args = parser.parse_args(argv)

    def stage(message: str) -> None:
        print(message, flush=True)

    if not torch.cuda.is_available():
        stage("no CUDA GPU on this machine: nothing to build (the CPU runs the models eagerly)")
        return 0

    # Imported after the GPU check: the backend settings pull in diffusers and transformers.
    from sdserve_backend.backends.diffusion import settings as model_settings
    from sdserve_backend.engine.backend import engine_dir_for
    from sdserve_backend.pipelines import load_components

    # 1. Read the config as the backend does
    model_config = json.loads(args.model_config or "{}")
    parameters = model_settings.config_parameters(model_config)
    version_dir = args.model_dir / str(args.version)
    weights, config_dir = model_settings.locate_weights(version_dir, parameters)
    max_batch_size = max(1, int(model_config.get("max_batch_size", 1) or 1))

    # 2. Load the weights
    started = time.perf_counter()
    placement = choose_placement("GPU", 0)
    components = load_components(weights, placement.device, placement.dtype, config_dir,
                                 model_settings.read_checkpoint_options(version_dir, parameters))
    stage(f"loaded {weights} on {torch.cuda.get_device_name(placement.device)} in {time.perf_counter() - started:.1f} s")
    defaults = model_settings.read_model_defaults(parameters, components.default_image_size)

    # 3. Build the engine
    _, report = prepare_with_report(
        components,
        placement,
        engine_dir=engine_dir_for(args.model_dir.name, str(args.version), version_dir, parameters, args.engine_cache_dir or None),
        max_rows=2 * max_batch_size,
        height=defaults.settings.height,
        width=defaults.settings.width,
        force_rebuild=args.force or is_forced(parameters),
        weights=weights,
        options=engine_options(parameters),
        log=stage,
        extra_sizes=defaults.engine_sizes,
    )
    for name, seconds in report.seconds.items():
        stage(f"  {name}: {seconds:.2f} s")
    stage(f"engine {report.status} ({report.reason}); choices {report.choices}; metadata {report.metadata_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
