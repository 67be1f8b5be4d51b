"""The backend's one call into the engine: its config read into `prepare`'s arguments, and where
a model version's engine lives."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sdserve_backend.backends.diffusion.settings import parse_engine_sizes
from sdserve_backend.engine.build import ENGINE_SUBDIR, engine_options, is_forced
from sdserve_backend.engine.prepare import prepare
from sdserve_backend.pipelines.components import DiffusionComponents
from sdserve_backend.pipelines.device import Placement


# The model config parameter that overrides the server's --engine-cache-dir for one model.
CACHE_PARAMETER = "engine_cache_dir"


def engine_dir_for(
    model_name: str, version: str, version_dir: Path, parameters: Mapping[str, str], cache_dir: str | Path | None
) -> Path:
    """Where a model version's engine (engine.json, compiled kernels) lives: `<cache>/<model>/<version>/`,
    the cache being the model's `engine_cache_dir` parameter, else the server's --engine-cache-dir
    (`cache_dir`). With neither, `<version>/engine/` inside the repository, as before either existed.
    A relative `engine_cache_dir` parameter is taken under the server's cache folder."""
    configured = str(parameters.get(CACHE_PARAMETER, "") or "").strip()
    root = Path(cache_dir) if cache_dir else None
    if configured:
        root = Path(configured) if Path(configured).is_absolute() or root is None else root / configured
    if root is None:
        return Path(version_dir) / ENGINE_SUBDIR
    return root / model_name / str(version)


def prepare_for_model(
    components: DiffusionComponents,
    placement: Placement,
    engine_dir: Path,
    model_config: Mapping[str, Any],
    parameters: Mapping[str, str],
    weights: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> DiffusionComponents:
    """`engine.prepare` for a model version: graphs for up to 2 x max_batch_size UNet rows (guidance
    doubles them) at the config's image size, the engine recorded in `engine_dir` (`engine_dir_for`)."""
    max_batch_size = max(1, int(model_config.get("max_batch_size", 1) or 1))
    return prepare(
        components,
        placement,
        engine_dir=Path(engine_dir),
        max_rows=2 * max_batch_size,
        height=_side(parameters.get("image_height", "")),
        width=_side(parameters.get("image_width", "")),
        force_rebuild=is_forced(dict(parameters)),
        weights=weights,
        options=engine_options(dict(parameters)),
        log=log,
        extra_sizes=parse_engine_sizes(parameters.get("engine_sizes", "")),
    )


def _side(text: str) -> int | None:
    # Bad values are the settings' to report (read_model_defaults); here they mean "the default".
    try:
        value = int(str(text).strip())
    except ValueError:
        return None
    return value if value > 0 else None
