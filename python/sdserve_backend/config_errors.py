"""Errors that put a failure on the model's config, so that a load it fails answers as the caller's error.

A LoadRequest that fails with one of these is answered with code INVALID_ARG (the core: HTTP 400,
gRPC INVALID_ARGUMENT); any other exception, a ValueError from deep inside a library included,
with INTERNAL. Only the checks of a config's own values raise them (docs/backend-protocol.md, "Errors").
"""

from __future__ import annotations


class ModelConfigError(Exception):
    """The model's config is at fault: a parameter the model refuses, a file it names that is not there."""


class InvalidParameter(ModelConfigError, ValueError):
    """A parameter's name or value is refused. Config parameters and request parameters share their
    checks: a request's is that request's error (INVALID_ARG, as every ValueError a request causes),
    a config's fails the load as the caller's."""


class ModelFileNotFound(ModelConfigError, FileNotFoundError):
    """A file the model needs is not where its config says (or, saying nothing, where the layout
    puts it): the model file, its weights, a file or model a config parameter names."""


class UnusableModelFile(ModelConfigError, ValueError):
    """A file the model's config names (or its layout places) is there but is not what it must be:
    not a readable checkpoint, not a layout the loader knows, a part missing that a parameter could give."""
