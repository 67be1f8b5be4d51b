"""The backend process: connects to the core, says hello, then serves one model.

Threads: the reader thread owns the socket's read side and is the one switch on message type.
Health and cancel are answered there at once, so they work while a long `execute` runs; load,
execute and finalize are queued to the main thread, which runs model code one call at a time.
A decoupled model's `execute` returns None at once and answers later through each request's
response sender, from any thread; its requests stay cancellable until their final response."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import platform
import queue
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

import triton_python_backend_utils as pb_utils
from sdserve_backend import PROTOCOL_VERSION
from sdserve_backend.config_errors import ModelConfigError
from sdserve_backend.ipc import Buffer, Frame, FrameReader, FrameWriter, MalformedFrame, encode_frame
from sdserve_backend.messages import HelloMeta, LoadErrorMeta, LoadResponseMeta, MessageType, RequestMeta, ResponseMeta, TensorMeta
from sdserve_backend.model_loader import load_model
from sdserve_backend.tensor_codec import array_from_payload, array_to_wire, padding_after

log = logging.getLogger("sdserve.backend")

# The reply that carries a handler's error, per request type (a load's: `_reply_load_error`);
# others get ErrorNotify.
ERROR_REPLY_TYPE = {
    MessageType.EXECUTE_REQUEST: MessageType.EXECUTE_RESPONSE,
    MessageType.FINALIZE_REQUEST: MessageType.FINALIZE_RESPONSE,
}

# A queued unit of model work; returns False when the process should stop serving.
Job = Callable[[], bool]

# Load failures with a cause the message says in full (weights not found, a bad config value):
# logged as one line, without the traceback, which would only bury the reason.
EXPECTED_LOAD_ERRORS: tuple[type[Exception], ...] = (FileNotFoundError, ValueError)


def load_error_code(error: BaseException) -> str:
    """The TritonError code name a failed load answers with: INVALID_ARG when the config is at fault
    (the backend's own config checks, or a model raising TritonModelException with that code), else
    INTERNAL. Decided by type, never by message: a ValueError from inside a library is the server's."""
    if isinstance(error, ModelConfigError):
        return "INVALID_ARG"
    if isinstance(error, pb_utils.TritonModelException) and error.code() == pb_utils.TritonError.INVALID_ARG:
        return "INVALID_ARG"
    return "INTERNAL"


def describe_exception(error: BaseException) -> str:
    """The traceback's last line with an unqualified type, e.g. `FileNotFoundError: weights not found at /m`."""
    message = str(error)
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


class BackendServer:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._reader = FrameReader(sock)
        self._writer = FrameWriter(sock)
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._model: Any = None
        self._in_flight_lock = threading.Lock()
        self._in_flight: dict[int, list[pb_utils.InferenceRequest]] = {}
        # Imports started ahead of the load request (`--preimport`); the load waits for them.
        self._preimport: threading.Thread | None = None

    def serve(self, preimport: list[str] | None = None) -> int:
        self._writer.send(MessageType.HELLO_NOTIFY, 0, dict(hello_metadata()))
        if preimport:
            self._preimport = threading.Thread(target=import_modules, args=(preimport,), name="sdserve-preimport",
                                               daemon=True)
            self._preimport.start()
        threading.Thread(target=self._read_loop, name="sdserve-frame-reader", daemon=True).start()
        while (job := self._jobs.get()) is not None and job():
            pass
        self._writer.close()
        return 0

    # -- reader thread -----------------------------------------------------------------------

    def _read_loop(self) -> None:
        while True:
            try:
                frame = self._reader.read()
            except MalformedFrame as error:
                log.warning("malformed frame: %s", error)
                self._writer.send(MessageType.ERROR_NOTIFY, error.correlation_id, {"error": str(error)})
                continue
            except OSError as error:
                log.warning("socket read failed: %s", error)
                frame = None
            if frame is None:
                self._on_disconnect()
                return
            try:
                self._dispatch(frame)
            except Exception as error:
                self._reply_error(frame, error)

    def _dispatch(self, frame: Frame) -> None:
        match frame.type:
            case MessageType.LOAD_REQUEST:
                self._jobs.put(lambda: self._guarded(frame, self._load))
            case MessageType.EXECUTE_REQUEST:
                requests = self._decode_requests(frame)
                self._jobs.put(lambda: self._guarded(frame, lambda f: self._execute(f, requests)))
            case MessageType.HEALTH_REQUEST:
                self._writer.send(MessageType.HEALTH_RESPONSE, frame.correlation_id, {})
            case MessageType.CANCEL_REQUEST:
                self._cancel(frame.metadata.get("request_ids", []))
            case MessageType.FINALIZE_REQUEST:
                self._jobs.put(lambda: self._guarded(frame, self._finalize))
            case _:
                raise ValueError(f"message type {frame.type.name} ({int(frame.type)}) is not a request")

    def _decode_requests(self, frame: Frame) -> list[pb_utils.InferenceRequest]:
        metas: list[RequestMeta] = frame.metadata["requests"]
        requests = [
            pb_utils.InferenceRequest(
                inputs=[self._decode_tensor(frame, tensor) for tensor in meta.get("inputs", [])],
                request_id=str(meta.get("request_id", "")),
                requested_output_names=meta.get("requested_output_names", []),
                parameters=meta.get("parameters", {}),
                batch_index=index,
                progress_sink=self._progress_sink(frame.correlation_id),
                response_sink=self._response_sink(frame.correlation_id),
            )
            for index, meta in enumerate(metas)
        ]
        with self._in_flight_lock:
            self._in_flight[frame.correlation_id] = requests
        return requests

    @staticmethod
    def _decode_tensor(frame: Frame, meta: TensorMeta) -> pb_utils.Tensor:
        array = array_from_payload(frame.payload, meta["name"], meta["datatype"], list(meta["shape"]),
                                   int(meta["offset"]), int(meta["length"]))
        return pb_utils.Tensor(meta["name"], array, datatype=meta["datatype"])

    def _cancel(self, request_ids: list[str]) -> None:
        wanted = set(request_ids)
        with self._in_flight_lock:
            for requests in self._in_flight.values():
                for request in requests:
                    if request.request_id() in wanted:
                        request.mark_cancelled()

    def _on_disconnect(self) -> None:
        log.info("the core closed the connection; exiting after the current call")
        with self._in_flight_lock:
            for requests in self._in_flight.values():
                for request in requests:
                    request.mark_cancelled()
        self._jobs.put(None)

    def _progress_sink(self, correlation_id: int) -> pb_utils.ProgressSink:
        def send_progress(request: pb_utils.InferenceRequest, step: Any, steps: Any, preview: Any = None) -> None:
            def encode() -> list[Buffer]:
                metadata: dict[str, Any] = {"request_id": request.request_id(), "request_index": request.batch_index,
                                            "step": int(step), "steps": int(steps)}
                if preview is None:
                    return encode_frame(MessageType.PROGRESS_NOTIFY, correlation_id, metadata)
                image = np.ascontiguousarray(preview() if callable(preview) else preview, dtype=np.uint8)
                metadata["preview_shape"] = list(image.shape)
                return encode_frame(MessageType.PROGRESS_NOTIFY, correlation_id, metadata, [memoryview(image).cast("B")])

            self._writer.send_later(encode)

        return send_progress

    def _response_sink(self, correlation_id: int) -> pb_utils.ResponseSink:
        def send_response(request: pb_utils.InferenceRequest, response: pb_utils.InferenceResponse | None,
                          flags: int) -> None:
            final = flags == pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
            metadata: dict[str, Any] = {"request_index": request.batch_index, "final": final}
            payload: list[Buffer] = []
            if response is not None:
                # Encoded now, on the sender's thread: what was sent is what the core gets.
                metadata["response"], payload, _ = encode_response(request, response, 0)
            self._writer.send(MessageType.RESPONSE_NOTIFY, correlation_id, metadata, payload)
            if final:
                self._forget_if_answered(correlation_id)

        return send_response

    def _forget_if_answered(self, correlation_id: int) -> None:
        """Drop a decoupled ExecuteRequest from the in-flight set once each request sent its final flag."""
        with self._in_flight_lock:
            requests = self._in_flight.get(correlation_id, [])
            if all(request.get_response_sender().is_final_sent() for request in requests):
                self._in_flight.pop(correlation_id, None)

    # -- main thread: model calls ---------------------------------------------------------------

    def _guarded(self, frame: Frame, handler: Callable[[Frame], bool]) -> bool:
        try:
            return handler(frame)
        except Exception as error:
            self._reply_error(frame, error)
            return frame.type != MessageType.FINALIZE_REQUEST

    def _reply_error(self, frame: Frame, error: Exception) -> None:
        if frame.type == MessageType.LOAD_REQUEST:
            self._reply_load_error(frame, error)
            return
        log.error("%s failed:\n%s", frame.type.name, "".join(traceback.format_exception(error)).rstrip())
        reply_type = ERROR_REPLY_TYPE.get(frame.type, MessageType.ERROR_NOTIFY)
        self._writer.send(reply_type, frame.correlation_id, {"error": describe_exception(error)})

    def _reply_load_error(self, frame: Frame, error: Exception) -> None:
        code = load_error_code(error)
        # The config's fault: its message is what the caller reads and fixes, without a type name.
        message = (str(error) or describe_exception(error)) if code == "INVALID_ARG" else describe_exception(error)
        if code == "INVALID_ARG" or isinstance(error, EXPECTED_LOAD_ERRORS):
            log.error("%s failed: %s", frame.type.name, message)
        else:
            log.error("%s failed:\n%s", frame.type.name, "".join(traceback.format_exception(error)).rstrip())
        reply: LoadErrorMeta = {"error": message, "code": code}
        self._writer.send(MessageType.LOAD_RESPONSE, frame.correlation_id, dict(reply))

    def _load(self, frame: Frame) -> bool:
        if self._model is not None:
            raise RuntimeError("a model is already loaded in this backend")
        model_file = frame.metadata["model_file"]
        if self._preimport is not None:
            # One importer at a time: two threads importing the same packages can deadlock on
            # their module locks (Python then hands one of them a half-initialized module).
            self._preimport.join()
            self._preimport = None
        log.info("loading %s (pid %d)", model_file, os.getpid())
        self._model = load_model(model_file, dict(frame.metadata.get("args", {})))
        self._writer.send(MessageType.LOAD_RESPONSE, frame.correlation_id, dict(load_response_metadata(self._model)))
        return True

    def _execute(self, frame: Frame, requests: list[pb_utils.InferenceRequest]) -> bool:
        decoupled = False
        try:
            if self._model is None:
                raise RuntimeError("no model is loaded in this backend")
            responses = self._model.execute(requests)
            if responses is None:
                # Decoupled: the senders answer, now or later; no ExecuteResponse follows.
                decoupled = True
                self._forget_if_answered(frame.correlation_id)
                return True
            if not isinstance(responses, (list, tuple)) or len(responses) != len(requests):
                count = len(responses) if isinstance(responses, (list, tuple)) else type(responses).__name__
                raise pb_utils.TritonModelException(
                    f"execute() must return None (decoupled) or a list of {len(requests)} InferenceResponse, "
                    f"got {count}"
                )
            metadata, payload = encode_responses(requests, responses)
        finally:
            if not decoupled:
                with self._in_flight_lock:
                    self._in_flight.pop(frame.correlation_id, None)
        self._writer.send(MessageType.EXECUTE_RESPONSE, frame.correlation_id, metadata, payload)
        return True

    def _finalize(self, frame: Frame) -> bool:
        finalize = getattr(self._model, "finalize", None)
        if callable(finalize):
            finalize()
        self._writer.send(MessageType.FINALIZE_RESPONSE, frame.correlation_id, {})
        return False


def encode_responses(requests: list[pb_utils.InferenceRequest],
                     responses: list[Any]) -> tuple[dict[str, Any], list[Buffer]]:
    """ExecuteResponse metadata and payload buffers; tensors padded to PAYLOAD_ALIGNMENT."""
    payload: list[Buffer] = []
    offset = 0
    metas: list[dict[str, Any]] = []
    for index, (request, response) in enumerate(zip(requests, responses)):
        if not isinstance(response, pb_utils.InferenceResponse):
            metas.append({"error": f"execute() response {index} is a {type(response).__name__}, "
                                   "not an InferenceResponse"})
            continue
        meta, buffers, offset = encode_response(request, response, offset)
        metas.append(meta)
        payload += buffers
    return {"responses": metas}, payload


def encode_response(request: pb_utils.InferenceRequest, response: pb_utils.InferenceResponse,
                    offset: int) -> tuple[ResponseMeta, list[Buffer], int]:
    """One ResponseMeta, its tensors' buffers placed from payload `offset`, and the offset after them."""
    error = response.error()
    if error is not None:
        return {"error": error.message(), "code": error.code_name()}, [], offset
    outputs = response.output_tensors()
    wanted = request.requested_output_names()
    if wanted:
        by_name = {tensor.name(): tensor for tensor in outputs}
        missing = [name for name in wanted if name not in by_name]
        if missing:
            return {"error": f"the model produced no output named {', '.join(missing)}",
                    "code": "INVALID_ARG"}, [], offset
        outputs = [by_name[name] for name in wanted]
    payload: list[Buffer] = []
    output_metas: list[TensorMeta] = []
    for tensor in outputs:
        datatype = tensor.kserve_datatype()
        data = array_to_wire(tensor.as_numpy(), datatype)
        output_metas.append({"name": tensor.name(), "datatype": datatype, "shape": tensor.shape(),
                             "offset": offset, "length": data.nbytes})
        payload.append(data)
        pad = padding_after(data.nbytes)
        if pad:
            payload.append(bytes(pad))
        offset += data.nbytes + pad
    meta: ResponseMeta = {"outputs": output_metas}
    parameters = json.loads(response.parameters())
    if parameters:
        meta["parameters"] = parameters
    return meta, payload, offset


def import_modules(names: list[str]) -> None:
    """Import `names` (a backend started before its load request: the load then finds torch and
    the model code already imported). A module that fails is only logged: the model's own import
    will report it."""
    started = time.perf_counter()
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - reported by the load, which imports it again
            log.warning("pre-importing %s failed: %s", name, describe_exception(error))
    log.info("pre-imported %s in %.1f s", ", ".join(names), time.perf_counter() - started)


def hello_metadata() -> HelloMeta:
    try:
        torch_version: str | None = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = None
    return {"protocol": PROTOCOL_VERSION, "pid": os.getpid(), "python": platform.python_version(),
            "torch": torch_version}


def load_response_metadata(model: Any) -> LoadResponseMeta:
    """`{cuda}`, plus the model's `capabilities()` when it declares them (plain Triton models don't)."""
    metadata: LoadResponseMeta = {"cuda": cuda_version()}
    declare = getattr(model, "capabilities", None)
    if callable(declare):
        metadata["capabilities"] = declare()
    return metadata


def cuda_version() -> str | None:
    """torch's CUDA version if the model imported torch (importing it here would slow every load)."""
    torch = sys.modules.get("torch")
    version = getattr(getattr(torch, "version", None), "cuda", None)
    return version if isinstance(version, str) else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sdserve_backend",
                                     description="Serve one Triton-style Python model to the sdserve core.")
    parser.add_argument("--socket", required=True, help="Unix socket path the core listens on")
    parser.add_argument("--log-level", default=os.environ.get("SDSERVE_BACKEND_LOG_LEVEL", "INFO"),
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--preimport", action="append", default=[], metavar="MODULE",
                        help="import MODULE right after connecting, before any load request (repeatable)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(args.socket)
    except OSError as error:
        log.error("cannot connect to %s: %s", args.socket, error)
        return 2
    try:
        return BackendServer(sock).serve(args.preimport)
    finally:
        sock.close()
