"""`engine/engine.json`: what an engine was built for, so a restart or `sdserve build` can tell
whether it is current, plus the choices its build measured (reused on a warm start)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ENGINE_FILE = "engine.json"
# Bumped whenever the engine's build changes what it records or captures.
FORMAT_VERSION = 1
# The fields that must all match for an engine to be current; the rest (choices, timings) is payload.
KEY_FIELDS = (
    "format",
    "torch",
    "cuda",
    "cudnn",
    "gpu",
    "capability",
    "config_hash",
    "weights_hash",
    "buckets",
    "vae_buckets",
    "height",
    "width",
    "fp8",
)
# What an engine recorded before a key field existed was built with: an older engine.json stays current.
KEY_FIELD_DEFAULTS = {"fp8": "off"}


def stable_hash(value: Any) -> str:
    """sha256 of `value` as canonical JSON (sorted keys; anything not JSON as its repr)."""
    text = json.dumps(value, sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def config_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    """A model config without diffusers' bookkeeping entries (`_name_or_path`, `_diffusers_version`,
    `_use_default_values`: the last lists the defaulted keys in set order, which changes with every
    process's hash seed, so hashing it would make each restart see a different config)."""
    return {key: value for key, value in config.items() if not key.startswith("_")}


# How much of each weights file's head and tail the fingerprint reads (a safetensors file starts
# with its header: every tensor's name, dtype, shape and offsets).
SAMPLE_BYTES = 64 * 1024


def weights_fingerprint(weights: Path | None, ignore: Path | None = None) -> str:
    """A hash over the relative name, size, first and last `SAMPLE_BYTES` of every file of the
    weights (a folder or one file), leaving out the folder `ignore` (the engine's own, which may
    sit inside the weights folder).

    Neither the absolute path nor the modification times take part: the same weights mounted
    elsewhere (another volume, a container, a fresh download) keep their engine. Whole contents
    are not read: a 7 GB checkpoint would take longer to hash than to capture."""
    if weights is None:
        return "unknown"
    weights = Path(weights)
    skipped = Path(ignore).resolve() if ignore is not None else None
    files = sorted(p for p in weights.rglob("*") if p.is_file()) if weights.is_dir() else [weights]
    if skipped is not None:
        files = [p for p in files if not p.resolve().is_relative_to(skipped)]
    entries = []
    for path in files:
        name = path.relative_to(weights).as_posix() if weights.is_dir() else path.name
        entries.append([name, path.stat().st_size, _sample_hash(path)])
    return stable_hash(entries)


def _sample_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        digest.update(file.read(SAMPLE_BYTES))
        size = file.seek(0, os.SEEK_END)
        if size > SAMPLE_BYTES:
            file.seek(max(SAMPLE_BYTES, size - SAMPLE_BYTES))
            digest.update(file.read(SAMPLE_BYTES))
    return digest.hexdigest()


def read_metadata(engine_dir: Path) -> dict[str, Any] | None:
    """The recorded metadata, or None when there is none or it is unreadable."""
    path = Path(engine_dir) / ENGINE_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def stale_fields(recorded: Mapping[str, Any] | None, expected: Mapping[str, Any]) -> list[str]:
    """The key fields whose recorded value differs from `expected`; all of them when nothing is recorded."""
    if recorded is None:
        return [field for field in KEY_FIELDS if field in expected]
    stale = [field for field in KEY_FIELDS
             if field in expected and _normal(recorded.get(field, KEY_FIELD_DEFAULTS.get(field))) != _normal(expected[field])]
    choices = recorded.get("choices")
    if "fp8" in expected and "fp8" not in stale and isinstance(choices, Mapping) and \
            choices.get("fp8", KEY_FIELD_DEFAULTS["fp8"]) != expected["fp8"]:
        # An engine.json written before "fp8" held the mode built in recorded the mode asked for
        # there, and the one built in (float16 where FP8 stayed off) only in its choices.
        stale.append("fp8")
    return stale


def is_current(recorded: Mapping[str, Any] | None, expected: Mapping[str, Any]) -> bool:
    return not stale_fields(recorded, expected)


def write_metadata(engine_dir: Path, data: Mapping[str, Any]) -> Path:
    """Write atomically (temporary file, then rename), so a crash never leaves half a file."""
    engine_dir = Path(engine_dir)
    engine_dir.mkdir(parents=True, exist_ok=True)
    path = engine_dir / ENGINE_FILE
    temporary = path.with_suffix(f".tmp{os.getpid()}")
    temporary.write_text(json.dumps(dict(data), indent=2, sort_keys=True, default=repr) + "\n")
    temporary.replace(path)
    return path


def _normal(value: Any) -> Any:
    # JSON turns tuples into lists; compare in that form.
    return json.loads(json.dumps(value, default=repr))
