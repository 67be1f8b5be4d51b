"""The closed set of IPC messages (docs/backend-protocol.md, "Messages"); mirrored by
src/backend/messages.ts. Requests come from the core, responses and notifications from here."""

from __future__ import annotations

from enum import IntEnum
from typing import Any, NotRequired, TypedDict


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


class HelloMeta(TypedDict):
    protocol: int
    pid: int
    python: str
    # The installed version, or None; torch is not imported at start, to keep it fast.
    torch: str | None


class LoadRequestMeta(TypedDict):
    model_file: str
    args: dict[str, str]


class LoadResponseMeta(TypedDict):
    """Success; a failure is LoadErrorMeta."""

    cuda: str | None
    # Declared by models that say what they take (docs/backend-protocol.md, "Capabilities").
    capabilities: NotRequired[dict[str, Any]]


class RequestMeta(TypedDict):
    request_id: str
    inputs: list[TensorMeta]
    # Empty: every output the model produces.
    requested_output_names: list[str]
    parameters: dict[str, Any]


class ExecuteRequestMeta(TypedDict):
    requests: list[RequestMeta]


class ResponseMeta(TypedDict, total=False):
    """`{outputs, parameters?}`, or `{error, code?}` for a per-request error."""

    outputs: list[TensorMeta]
    # The response's parameters (`InferenceResponse(parameters=...)`), when it has any.
    parameters: dict[str, Any]
    error: str
    # A `pb_utils.TritonError` code name.
    code: str


class ExecuteResponseMeta(TypedDict):
    responses: list[ResponseMeta]


class ErrorMeta(TypedDict):
    error: str


class LoadErrorMeta(TypedDict):
    error: str
    # "INVALID_ARG": the model's config is at fault (the caller's error); "INTERNAL": anything else.
    code: str


class ProgressMeta(TypedDict):
    request_id: str
    # Position of the request in its ExecuteRequest.
    request_index: int
    step: int
    steps: int
    # [H, W, 3]: the payload is a uint8 preview image of the request.
    preview_shape: NotRequired[list[int]]


class ResponseNotifyMeta(TypedDict):
    # Position of the request in its ExecuteRequest.
    request_index: int
    # Absent when the model sent only the final flag (`send(None, FINAL)`).
    response: NotRequired[ResponseMeta]
    # The request's last response: nothing more comes for it.
    final: bool


class CancelRequestMeta(TypedDict):
    request_ids: list[str]
