"""The backend's one call into the engine: its config read into `prepare`'s arguments."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sdserve_backend.engine.build import ENGINE_SUBDIR, engine_options, is_forced
from sdserve_backend.engine.prepare import prepare
from sdserve_backend.pipelines.components import DiffusionComponents
from sdserve_backend.pipelines.device import Placement


def prepare_for_model(
    components: DiffusionComponents,
    placement: Placement,
    version_dir: Path,
    model_config: Mapping[str, Any],
    parameters: Mapping[str, str],
    weights: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> DiffusionComponents:
    """`engine.prepare` for a model version: graphs for up to 2 x max_batch_size UNet rows (guidance
    doubles them) at the config's image size, the engine recorded in `<version>/engine/`."""
    max_batch_size = max(1, int(model_config.get("max_batch_size", 1) or 1))
    return prepare(
        components,
        placement,
        engine_dir=Path(version_dir) / ENGINE_SUBDIR,
        max_rows=2 * max_batch_size,
        height=_side(parameters.get("image_height", "")),
        width=_side(parameters.get("image_width", "")),
        force_rebuild=is_forced(dict(parameters)),
        weights=weights,
        options=engine_options(dict(parameters)),
        log=log,
    )


def _side(text: str) -> int | None:
    # Bad values are the settings' to report (read_model_defaults); here they mean "the default".
    try:
        value = int(str(text).strip())
    except ValueError:
        return None
    return value if value > 0 else None
