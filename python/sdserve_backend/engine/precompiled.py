"""Precompiled forwards: torch.compile's ahead-of-time artifacts kept in the engine folder.

A compiled engine used to run `torch.compile` on every start: the Inductor cache in the engine
folder spared the kernel compiles, but Dynamo traced the UNet and the VAE decoder again each time
(about 25 s for SD 1.5). `PrecompiledForward` compiles a forward with `aot_compile` instead (the
same Dynamo and Inductor pipeline, so the same kernels), saves the result next to the engine and,
on the next start, loads it: no tracing, no guards, only the compiled code.

An artifact is keyed by what its code depends on: the function, the shapes, dtypes and layouts of
its inputs (one row, or a row count left symbolic), and the engine's own key (torch, CUDA, GPU,
model config, engine choices). The parameters are inputs of the compiled code, read from the model
at every call, so the weights themselves are not part of it. An artifact that is missing, stale,
damaged or unloadable is compiled again, with a log line saying why; a forward that cannot be
compiled ahead of time (a graph break) runs through plain `torch.compile` as before, and that is
recorded so later starts do not try again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from sdserve_backend.engine import metadata

PRECOMPILED_SUBDIR = "precompiled"
# Bumped when what an artifact holds or how it is keyed changes. 2: the UNet's row-symbolic
# forward serves one row too (`runners._rows_symbolic_from_one`); an artifact of format 1 was
# compiled assuming 2 rows and up, and must not be loaded for one row under the same signature.
ARTIFACT_FORMAT = 2


class PrecompiledForward:
    """`function(model, *args)` compiled ahead of time once per input signature, each compile
    saved in `folder` (None: kept in memory only) and loaded from there on later starts.

    The caller keeps each signature's inputs alike (the engine's buffers): guards are not checked
    on the loaded code, so a row dimension marked dynamic (`torch._dynamo.mark_dynamic`) is the
    only thing that may vary between calls of one signature."""

    def __init__(self, name: str, function: Callable[..., Any], folder: Path | None, key: Mapping[str, Any],
                 log: Callable[[str], None] | None = None, backend: str = "inductor") -> None:
        self.name = name
        self.function = function
        self.folder = Path(folder) if folder is not None else None
        self.key = dict(key)
        self.backend = backend
        self._say = log or (lambda message: None)
        self._variants: dict[str, Callable[..., Any]] = {}
        # What each signature's first call did: "loaded", "compiled" or "torch.compile".
        self.sources: dict[str, str] = {}

    def __call__(self, model: Any, *args: Any) -> Any:
        signature = input_signature(args)
        compiled = self._variants.get(signature)
        if compiled is not None:
            return compiled(model, *args)
        compiled = self._variants[signature] = self._load_or_compile(signature, model, args)
        if self.sources.get(signature) != "loaded":
            return compiled(model, *args)
        try:
            return compiled(model, *args)
        except Exception as error:  # noqa: BLE001 - an artifact that loads but cannot run is rebuilt too
            # (a model whose structure changed under the same key, say): its first call tells.
            self._say(f"engine: precompiled {self.name} [{signature}] failed on its first call "
                      f"({_first_line(error)}); compiling it ahead of time")
            compiled = self._variants[signature] = self._compile(signature, model, args)
            return compiled(model, *args)

    def used_paths(self) -> set[Path]:
        """The artifacts (and their descriptions) this forward loaded or wrote so far."""
        paths = {self.artifact_path(signature) for signature in self._variants}
        return {path for artifact in paths if artifact is not None for path in (artifact, artifact.with_suffix(".json"))}

    def artifact_path(self, signature: str) -> Path | None:
        """Where the artifact of `signature` lives (its `.json` description sits beside it)."""
        if self.folder is None:
            return None
        digest = metadata.stable_hash({"format": ARTIFACT_FORMAT, "name": self.name, "signature": signature,
                                       "backend": self.backend, "key": self.key})
        return self.folder / f"{self.name}-{digest[:20]}.bin"

    # -- load, or compile and save ------------------------------------------------------------

    def _load_or_compile(self, signature: str, model: Any, args: tuple[Any, ...]) -> Callable[..., Any]:
        path = self.artifact_path(signature)
        label = f"{self.name} [{signature}]"
        if path is not None:
            started = time.perf_counter()
            loaded, reason = self._load(path, signature)
            if loaded is not None:
                self._say(f"engine: loaded precompiled {label} in {time.perf_counter() - started:.1f} s")
                self.sources[signature] = "loaded"
                return loaded
            if reason == "not precompilable":
                self._say(f"engine: {label} is not precompilable (recorded); compiling it with torch.compile")
                self.sources[signature] = "torch.compile"
                return torch.compile(self.function)
            self._say(f"engine: precompiled {label} {reason}; compiling it ahead of time")
        return self._compile(signature, model, args)

    def _compile(self, signature: str, model: Any, args: tuple[Any, ...]) -> Callable[..., Any]:
        path = self.artifact_path(signature)
        label = f"{self.name} [{signature}]"
        started = time.perf_counter()
        try:
            compiled = _ahead_of_time(self.function, self.backend).aot_compile(((model, *args), {}))
        except Exception as error:  # noqa: BLE001 - any failure here leaves torch.compile's own path
            self._say(f"engine: {label} cannot be compiled ahead of time ({_first_line(error)}); "
                      "compiling it with torch.compile")
            if path is not None:
                self._describe(path, signature, {"error": _first_line(error)})
            self.sources[signature] = "torch.compile"
            return torch.compile(self.function)
        seconds = time.perf_counter() - started
        if path is not None:
            self._save(compiled, path, signature, seconds)
        self._say(f"engine: compiled {label} ahead of time in {seconds:.1f} s")
        self.sources[signature] = "compiled"
        return compiled

    def _load(self, path: Path, signature: str) -> tuple[Any, str]:
        """The loaded artifact, or None and why not."""
        description = _read_json(path.with_suffix(".json"))
        if description is None:
            return None, "missing"
        if description.get("format") != ARTIFACT_FORMAT or description.get("name") != self.name or \
                description.get("signature") != signature or description.get("key") != _normal(self.key):
            return None, "stale"
        if "error" in description:
            return None, "not precompilable"
        try:
            data = path.read_bytes()
        except OSError as error:
            return None, f"unreadable ({error.strerror or error})"
        if hashlib.sha256(data).hexdigest() != description.get("sha256"):
            return None, "damaged (checksum differs)"
        try:
            loaded = torch.compiler.load_compiled_function(io.BytesIO(data))
        except Exception as error:  # noqa: BLE001 - a bad artifact means a rebuild, never a failed load
            return None, f"unloadable ({_first_line(error)})"
        disable = getattr(loaded, "disable_guard_check", None)
        if callable(disable):
            disable()  # the engine dispatches by shape itself; guards would only cost time
        return loaded, ""

    def _save(self, compiled: Any, path: Path, signature: str, seconds: float) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(f".tmp{os.getpid()}")
            compiled.save_compiled_function(str(temporary))
            data = temporary.read_bytes()
            temporary.replace(path)
        except Exception as error:  # noqa: BLE001 - the compiled code still serves this process
            self._say(f"engine: could not save precompiled {self.name} [{signature}] ({_first_line(error)})")
            return
        self._describe(path, signature, {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                                         "compile_s": round(seconds, 2)})

    def _describe(self, path: Path, signature: str, fields: Mapping[str, Any]) -> None:
        description = {"format": ARTIFACT_FORMAT, "name": self.name, "signature": signature, "backend": self.backend,
                       "key": _normal(self.key), "torch": torch.__version__,
                       "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **fields}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            target = path.with_suffix(".json")
            temporary = target.with_suffix(f".tmp{os.getpid()}")
            temporary.write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")
            temporary.replace(target)
        except OSError as error:
            self._say(f"engine: could not record precompiled {self.name} [{signature}] ({error})")


def _ahead_of_time(function: Callable[..., Any], backend: str) -> Any:
    """`torch.compile(function)` with its `aot_compile` method: whole-graph, no guards kept (the
    engine dispatches by input signature itself). torch before 2.12 attaches the method only while
    `torch._dynamo.config.enable_aot_compile` is on."""
    options = {"guard_filter_fn": _no_guards}
    if hasattr(torch._dynamo.config, "enable_aot_compile"):
        with torch._dynamo.config.patch(enable_aot_compile=True):
            return torch.compile(function, fullgraph=True, backend=backend, options=options)
    return torch.compile(function, fullgraph=True, backend=backend, options=options)


def _no_guards(entries: list[Any]) -> list[bool]:
    return [False] * len(entries)


def prune(folder: Path, keep: set[Path], log: Callable[[str], None] | None = None) -> int:
    """Remove the artifacts in `folder` that are not in `keep` (those of an older torch, model or
    engine: a key that changed never comes back as it was); returns how many files went."""
    removed = 0
    kept = {path.resolve() for path in keep}
    for path in sorted(Path(folder).glob("*")) if Path(folder).is_dir() else []:
        if path.is_file() and path.resolve() not in kept:
            try:
                path.unlink()
                removed += 1
            except OSError as error:
                (log or (lambda message: None))(f"engine: could not remove the old artifact {path.name} ({error})")
    return removed


def input_signature(args: tuple[Any, ...]) -> str:
    """What compiled code depends on in `args`: each tensor's dtype, device, shape (a dimension
    marked dynamic as `*`) and whether it is channels_last; other values by type, None as None;
    dicts by their sorted keys."""
    return ";".join(_describe_value(value) for value in args)


def _describe_value(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        dynamic = getattr(value, "_dynamo_dynamic_indices", set())
        shape = "x".join("*" if index in dynamic else str(size) for index, size in enumerate(value.shape))
        layout = ",cl" if value.ndim == 4 and value.is_contiguous(memory_format=torch.channels_last) \
            and not value.is_contiguous() else ""
        return f"{str(value.dtype).removeprefix('torch.')}[{shape}]{value.device.type}{layout}"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{name}:{_describe_value(value[name])}" for name in sorted(value)) + "}"
    if value is None:
        return "None"
    if isinstance(value, (bool, int, float, str)):
        return repr(value)
    return type(value).__name__


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _normal(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=repr))


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300]}" if text else type(error).__name__
