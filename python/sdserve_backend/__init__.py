"""The sdserve backend process: hosts one Triton-style Python model and serves the core over a
Unix socket (protocol: docs/backend-protocol.md). Run it as `python -m sdserve_backend --socket PATH`."""

PROTOCOL_VERSION = 1
