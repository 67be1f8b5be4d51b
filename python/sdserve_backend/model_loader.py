"""Imports a model file as its own module and instantiates its `TritonPythonModel`."""

from __future__ import annotations

import importlib.util
import itertools
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

from sdserve_backend.config_errors import ModelFileNotFound

_module_numbers = itertools.count(1)


def load_model(model_file: str, args: dict[str, str]) -> Any:
    """Returns the initialized `TritonPythonModel` instance defined in `model_file`."""
    path = Path(model_file)
    if not path.is_file():
        raise ModelFileNotFound(f"model file not found at {model_file}")
    # A unique module name keeps two versions' `model.py` from replacing each other in sys.modules.
    model_name = re.sub(r"\W", "_", path.parent.parent.name)
    module_name = f"sdserve_model_{model_name}_{next(_module_numbers)}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {model_file} as a Python module")
    # Models may import helper modules that sit next to them.
    model_dir = str(path.parent)
    if model_dir not in sys.path:
        sys.path.insert(0, model_dir)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    started = time.perf_counter()
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    imported = time.perf_counter()
    model_class = getattr(module, "TritonPythonModel", None)
    if model_class is None:
        raise AttributeError(f"{model_file} defines no class TritonPythonModel")
    model = model_class()
    initialize = getattr(model, "initialize", None)
    if callable(initialize):
        initialize(args)
    # Where a load's time goes (the imports are a fixed part of every warm start).
    logging.getLogger("sdserve.backend").info(
        "imported %s in %.1f s, initialized in %.1f s", model_file, imported - started, time.perf_counter() - imported)
    return model
