"""sdserve's implementation of the module Triton Python-backend models import as `pb_utils`.

It offers the documented model-facing API (tensors, requests, responses, decoupled response
senders, errors, config helpers, type conversions, logging) plus sdserve extensions:
`InferenceRequest.report_progress` and `InferenceResponseSender.is_connected`."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from sdserve_backend.tensor_codec import (
    KSERVE_TO_NUMPY,
    deserialize_bytes_tensor,
    kserve_datatype_of,
    serialize_byte_tensor,
)

__all__ = [
    "Tensor", "InferenceRequest", "InferenceResponse", "InferenceResponseSender", "TritonError",
    "TritonModelException", "Logger", "get_input_tensor_by_name", "get_output_tensor_by_name",
    "get_input_config_by_name", "get_output_config_by_name", "using_decoupled_model_transaction_policy",
    "triton_string_to_numpy", "numpy_to_triton_type", "triton_to_numpy_type", "serialize_byte_tensor", "deserialize_bytes_tensor",
]

# TRITONSERVER_DataType values, as Triton numbers them.
TRITONSERVER_TYPE_INVALID = 0
TRITONSERVER_TYPE_BOOL = 1
TRITONSERVER_TYPE_UINT8 = 2
TRITONSERVER_TYPE_UINT16 = 3
TRITONSERVER_TYPE_UINT32 = 4
TRITONSERVER_TYPE_UINT64 = 5
TRITONSERVER_TYPE_INT8 = 6
TRITONSERVER_TYPE_INT16 = 7
TRITONSERVER_TYPE_INT32 = 8
TRITONSERVER_TYPE_INT64 = 9
TRITONSERVER_TYPE_FP16 = 10
TRITONSERVER_TYPE_FP32 = 11
TRITONSERVER_TYPE_FP64 = 12
TRITONSERVER_TYPE_BYTES = 13
TRITONSERVER_TYPE_BF16 = 14

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1

_KSERVE_TO_TRITON_TYPE: dict[str, int] = {
    "BOOL": TRITONSERVER_TYPE_BOOL, "UINT8": TRITONSERVER_TYPE_UINT8, "UINT16": TRITONSERVER_TYPE_UINT16,
    "UINT32": TRITONSERVER_TYPE_UINT32, "UINT64": TRITONSERVER_TYPE_UINT64, "INT8": TRITONSERVER_TYPE_INT8,
    "INT16": TRITONSERVER_TYPE_INT16, "INT32": TRITONSERVER_TYPE_INT32, "INT64": TRITONSERVER_TYPE_INT64,
    "FP16": TRITONSERVER_TYPE_FP16, "FP32": TRITONSERVER_TYPE_FP32, "FP64": TRITONSERVER_TYPE_FP64,
    "BYTES": TRITONSERVER_TYPE_BYTES, "BF16": TRITONSERVER_TYPE_BF16,
}
_TRITON_TYPE_TO_KSERVE = {value: name for name, value in _KSERVE_TO_TRITON_TYPE.items()}


class TritonError:
    """A per-request error, carried by `InferenceResponse(error=...)`."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    _CODE_NAMES = {
        UNKNOWN: "UNKNOWN", INTERNAL: "INTERNAL", NOT_FOUND: "NOT_FOUND", INVALID_ARG: "INVALID_ARG",
        UNAVAILABLE: "UNAVAILABLE", UNSUPPORTED: "UNSUPPORTED", ALREADY_EXISTS: "ALREADY_EXISTS",
        CANCELLED: "CANCELLED",
    }

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        if code not in self._CODE_NAMES:
            raise ValueError(f"TritonError code {code} is not one of {sorted(self._CODE_NAMES)}")
        self._message = message
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def code_name(self) -> str:
        return self._CODE_NAMES[self._code]

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, {self.code_name()})"


class TritonModelException(Exception):
    """Raised by models for failures that concern the whole model or batch.

    sdserve extension: `code`, a `TritonError` code, says whose fault the failure is. Raised from
    `initialize` with `TritonError.INVALID_ARG` (a config the model refuses), the load fails as the
    caller's error (HTTP 400, gRPC INVALID_ARGUMENT); with the default, INTERNAL, as the server's."""

    def __init__(self, message: str = "", code: int = TritonError.INTERNAL) -> None:
        super().__init__(message)
        self._error = TritonError(message, code)

    def code(self) -> int:
        return self._error.code()

    def code_name(self) -> str:
        return self._error.code_name()


class Tensor:
    """A named tensor backed by a numpy array (always in host memory)."""

    def __init__(self, name: str, array: npt.ArrayLike, *, datatype: str | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise TritonModelException(f"Tensor name must be a non-empty string, got {name!r}")
        numpy_array = array if isinstance(array, np.ndarray) else np.asarray(array)
        self._name = name
        self._array = numpy_array
        # `datatype` is only needed where numpy cannot tell (BF16 arrives as raw uint16 bits).
        self._datatype = datatype or kserve_datatype_of(numpy_array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> npt.NDArray[Any]:
        return self._array

    def triton_dtype(self) -> int:
        return _KSERVE_TO_TRITON_TYPE[self._datatype]

    def kserve_datatype(self) -> str:
        return self._datatype

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def is_cpu(self) -> bool:
        return True

    def to_dlpack(self) -> Any:
        return self._array.__dlpack__()

    @staticmethod
    def from_dlpack(name: str, dlpack_object: Any) -> "Tensor":
        """From any host-memory object implementing `__dlpack__` (e.g. a CPU torch tensor)."""
        return Tensor(name, np.from_dlpack(dlpack_object))

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, {self._datatype}, shape={list(self._array.shape)})"


ProgressSink = Callable[["InferenceRequest", Any, Any, Any], None]
# Delivers one decoupled response (None with the final flag: "no more responses") to the core.
ResponseSink = Callable[["InferenceRequest", "InferenceResponse | None", int], None]


class InferenceRequest:
    """One request of a batch handed to `TritonPythonModel.execute`."""

    def __init__(self, inputs: Iterable[Tensor], request_id: str = "",
                 requested_output_names: Iterable[str] = (), parameters: dict[str, Any] | str | None = None,
                 flags: int = 0, *, batch_index: int = 0, progress_sink: ProgressSink | None = None,
                 response_sink: ResponseSink | None = None) -> None:
        self._inputs = list(inputs)
        self._request_id = request_id
        self._requested_output_names = list(requested_output_names)
        if isinstance(parameters, str):
            parameters = json.loads(parameters)
        self._parameters: dict[str, Any] = dict(parameters or {})
        self._flags = flags
        self._cancelled = False
        self.batch_index = batch_index
        self._progress_sink = progress_sink
        self._sender = InferenceResponseSender(self, response_sink)

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def requested_output_names(self) -> list[str]:
        return self._requested_output_names

    def request_id(self) -> str:
        return self._request_id

    def parameters(self) -> str:
        """The request parameters as a JSON object string (Triton's form)."""
        return json.dumps(self._parameters)

    def flags(self) -> int:
        return self._flags

    def is_cancelled(self) -> bool:
        return self._cancelled

    def mark_cancelled(self) -> None:
        self._cancelled = True

    def get_response_sender(self) -> "InferenceResponseSender":
        """The sender a decoupled model (one whose `execute` returns None) answers this request
        through, from any thread; the same sender on every call."""
        return self._sender

    def report_progress(self, step: Any, steps: Any, preview: Any = None) -> None:
        """sdserve extension: tells the client how far this request has come.

        Returns at once; `step`/`steps` may be ints or 0-d device tensors, converted later on the
        writer thread so a denoising loop never waits on the device for this. `preview`, if
        given, is a small uint8 [H, W, 3] image (a numpy array, or a callable returning one on
        the writer thread) sent with the progress."""
        if self._progress_sink is not None:
            self._progress_sink(self, step, steps, preview)

    def __repr__(self) -> str:
        return f"InferenceRequest(id={self._request_id!r}, inputs={self._inputs!r})"


class InferenceResponseSender:
    """Sends a decoupled model's responses for one request: any number of responses, then the
    final flag (on the last response, or alone with `response=None`). Thread-safe."""

    def __init__(self, request: InferenceRequest, sink: ResponseSink | None) -> None:
        self._request = request
        self._sink = sink
        self._lock = threading.Lock()
        self._final_sent = False
        self._kept: list[InferenceResponse] = []

    def send(self, response: "InferenceResponse | None" = None, flags: int = 0) -> None:
        """Send `response`; `flags=TRITONSERVER_RESPONSE_COMPLETE_FINAL` marks the last one.

        Raises TritonModelException after the final flag was sent, for flags other than 0 and
        the final flag, for a None response without the final flag, and for a non-response."""
        if flags not in (0, TRITONSERVER_RESPONSE_COMPLETE_FINAL):
            raise TritonModelException(
                f"send() flags must be 0 or TRITONSERVER_RESPONSE_COMPLETE_FINAL ({TRITONSERVER_RESPONSE_COMPLETE_FINAL}), got {flags!r}"
            )
        final = flags == TRITONSERVER_RESPONSE_COMPLETE_FINAL
        if response is None and not final:
            raise TritonModelException("send() needs a response unless flags is TRITONSERVER_RESPONSE_COMPLETE_FINAL")
        if response is not None and not isinstance(response, InferenceResponse):
            raise TritonModelException(f"send() response must be an InferenceResponse, got {type(response).__name__}")
        with self._lock:
            if self._final_sent:
                raise TritonModelException(
                    f"request {self._request.request_id()!r} already sent its final response; nothing more can be sent"
                )
            self._final_sent = final
            if self._sink is None:
                if response is not None:
                    self._kept.append(response)
                return
            # Under the lock, so two threads' responses reach the core in the order they were sent.
            self._sink(self._request, response, flags)

    def is_cancelled(self) -> bool:
        return self._request.is_cancelled()

    def is_final_sent(self) -> bool:
        """Whether the final flag was sent (sdserve extension)."""
        return self._final_sent

    def is_connected(self) -> bool:
        """sdserve extension: True when sent responses go to the core (requests the backend stub
        made); False for requests made in-process (tests, direct calls), whose sender keeps what
        it is sent for `sent_responses()`."""
        return self._sink is not None

    def sent_responses(self) -> list["InferenceResponse"]:
        """The responses sent so far through a sender that is not connected (sdserve extension)."""
        with self._lock:
            return list(self._kept)


class InferenceResponse:
    def __init__(self, output_tensors: Iterable[Tensor] | None = None, error: TritonError | str | None = None,
                 parameters: dict[str, Any] | None = None) -> None:
        self._output_tensors = list(output_tensors or [])
        self._error = TritonError(error) if isinstance(error, str) else error
        self._parameters = dict(parameters or {})

    def output_tensors(self) -> list[Tensor]:
        return self._output_tensors

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        return json.dumps(self._parameters)


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    return next((tensor for tensor in request.inputs() if tensor.name() == name), None)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return next((tensor for tensor in response.output_tensors() if tensor.name() == name), None)


def _config_entry(model_config: dict[str, Any] | str, section: str, name: str) -> dict[str, Any] | None:
    config = json.loads(model_config) if isinstance(model_config, str) else model_config
    return next((entry for entry in config.get(section, []) if entry.get("name") == name), None)


def get_input_config_by_name(model_config: dict[str, Any] | str, name: str) -> dict[str, Any] | None:
    return _config_entry(model_config, "input", name)


def get_output_config_by_name(model_config: dict[str, Any] | str, name: str) -> dict[str, Any] | None:
    return _config_entry(model_config, "output", name)


def using_decoupled_model_transaction_policy(model_config: dict[str, Any] | str) -> bool:
    """Whether the config sets `model_transaction_policy { decoupled: true }`."""
    config = json.loads(model_config) if isinstance(model_config, str) else model_config
    policy = config.get("model_transaction_policy") or {}
    return policy.get("decoupled") in (True, "true")


def _config_type_to_kserve(type_string: str) -> str | None:
    if type_string == "TYPE_STRING":
        return "BYTES"
    name = type_string.removeprefix("TYPE_")
    return name if name in KSERVE_TO_NUMPY and name != "BYTES" else None


def triton_string_to_numpy(type_string: str) -> Any:
    """`"TYPE_FP32"` -> `np.float32`; `"TYPE_STRING"` -> `np.object_`; None if unknown."""
    name = _config_type_to_kserve(type_string)
    return None if name is None else KSERVE_TO_NUMPY[name].type


def numpy_to_triton_type(numpy_type: Any) -> int | None:
    """A numpy dtype (or type) -> its TRITONSERVER_TYPE_* value; None if it has none."""
    dtype = np.dtype(numpy_type)
    try:
        return _KSERVE_TO_TRITON_TYPE[kserve_datatype_of(np.empty(0, dtype=dtype))]
    except TypeError:
        return None


def triton_to_numpy_type(triton_type: int) -> Any:
    """A TRITONSERVER_TYPE_* value -> its numpy type (BF16 as np.uint16 bit patterns); None if unknown."""
    name = _TRITON_TYPE_TO_KSERVE.get(triton_type)
    return None if name is None else KSERVE_TO_NUMPY[name].type


class Logger:
    """Model logging; lines go to the backend's stderr, which the core forwards to its log."""

    _log = logging.getLogger("sdserve.model")

    @classmethod
    def log_info(cls, message: str) -> None:
        cls._log.info(message)

    @classmethod
    def log_warn(cls, message: str) -> None:
        cls._log.warning(message)

    @classmethod
    def log_error(cls, message: str) -> None:
        cls._log.error(message)

    @classmethod
    def log_verbose(cls, message: str) -> None:
        cls._log.debug(message)
