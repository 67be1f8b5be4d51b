"""Booleans as config parameters and request parameters spell them, parsed one way everywhere."""

from __future__ import annotations

from typing import Any

from sdserve_backend.config_errors import InvalidParameter
from sdserve_backend.quoting import quoted


def parse_bool(name: str, value: Any, default: bool, source: str) -> bool:
    """True/False (JSON), or "true"/"false" in any case; "" and None mean `default`.

    Raises InvalidParameter naming `source` and `name` (e.g. "config parameter 'step_batching'")."""
    if isinstance(value, bool):
        return value
    text = "" if value is None else str(value).strip().lower()
    if text == "":
        return default
    if text in ("true", "false"):
        return text == "true"
    raise InvalidParameter(f"{source} '{name}' must be \"true\" or \"false\", got {quoted(value)}")
