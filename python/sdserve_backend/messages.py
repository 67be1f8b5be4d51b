"""The closed set of IPC messages (docs/backend-protocol.md, "Messages"); mirrored by
src/backend/messages.ts. Requests come from the core, responses and notifications from here."""

from __future__ import annotations

from enum import IntEnum
from typing import Any, TypedDict


class MessageType(IntEnum):
    HELLO_NOTIFY = 1
    LOAD_REQUEST = 2
    LOAD_RESPONSE = 3
    EXECUTE_REQUEST = 4
    EXECUTE_RESPONSE = 5
    HEALTH_REQUEST = 6
    HEALTH_RESPONSE = 7
    FINALIZE_REQUEST = 8
    FINALIZE_RESPONSE = 9
    ERROR_NOTIFY = 10
    PROGRESS_NOTIFY = 11
    CANCEL_REQUEST = 12
    RESPONSE_NOTIFY = 13


class TensorMeta(TypedDict):
    name: str
    datatype: str
    shape: list[int]
    offset: int
    length: int


class RequestMeta(TypedDict):
    request_id: str
    inputs: list[TensorMeta]
    requested_output_names: list[str]
    parameters: dict[str, Any]


class HelloMeta(TypedDict):
    protocol: int
    pid: int
    python: str
    torch: str | None
    cuda: str | None


class LoadRequestMeta(TypedDict):
    model_file: str
    args: dict[str, str]


class ResponseNotifyMeta(TypedDict, total=False):
    request_index: int
    # Absent when the model sent only the final flag (`send(None, FINAL)`).
    response: dict[str, Any]
    final: bool


class ProgressMeta(TypedDict):
    request_id: str
    request_index: int
    step: int
    steps: int
