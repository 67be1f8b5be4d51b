"""Framing over the core's Unix socket (docs/backend-protocol.md, "Frame").

Reads go straight into preallocated buffers with `recv_into`; the payload gets its own numpy
buffer so tensors can be viewed in place. Writes go through one writer thread, so any thread
(e.g. a denoising loop reporting progress) can send without blocking or interleaving frames."""

from __future__ import annotations

import json
import logging
import queue
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import numpy.typing as npt

from sdserve_backend.messages import MessageType

# length, type, reserved, correlation_id, json_length
HEADER = struct.Struct("<IHHQI")
# Bytes counted by `length` before the JSON: type, reserved, correlation_id, json_length.
FIXED_AFTER_LENGTH = HEADER.size - 4
MAX_FRAME_LENGTH = 0xFFFFFFFF

Buffer = Union[bytes, bytearray, memoryview]

log = logging.getLogger("sdserve.backend.ipc")


class MalformedFrame(Exception):
    """A frame that was read to its end but cannot be understood; the stream stays in sync."""

    def __init__(self, message: str, correlation_id: int = 0) -> None:
        super().__init__(message)
        self.correlation_id = correlation_id


@dataclass
class Frame:
    type: MessageType
    correlation_id: int
    metadata: dict[str, Any]
    payload: npt.NDArray[np.uint8]


def encode_frame(message_type: MessageType, correlation_id: int, metadata: dict[str, Any],
                 payload: Sequence[Buffer] = ()) -> list[Buffer]:
    """Header + JSON as one buffer, followed by the payload buffers as they are (no copy)."""
    metadata_bytes = json.dumps(metadata, separators=(",", ":")).encode("utf-8")
    payload_length = sum(memoryview(part).nbytes for part in payload)
    length = FIXED_AFTER_LENGTH + len(metadata_bytes) + payload_length
    if length > MAX_FRAME_LENGTH:
        raise ValueError(f"frame of {length} bytes exceeds the protocol's 4 GiB - 1 limit")
    header = HEADER.pack(length, int(message_type), 0, correlation_id, len(metadata_bytes))
    return [header + metadata_bytes, *payload]


class FrameReader:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._header = bytearray(HEADER.size)

    def read(self) -> Frame | None:
        """The next frame, or None once the peer has closed the connection.

        Raises MalformedFrame after consuming a bad frame, so the caller can report it and go on."""
        header = memoryview(self._header)
        if not self._recv_exactly(header[:4]):
            return None
        (length,) = struct.unpack_from("<I", header)
        if length < FIXED_AFTER_LENGTH:
            if not self._discard(length):
                return None
            raise MalformedFrame(f"frame length {length} is below the {FIXED_AFTER_LENGTH}-byte minimum")
        if not self._recv_exactly(header[4:]):
            return None
        _, type_value, _, correlation_id, json_length = HEADER.unpack(header)
        body_length = length - FIXED_AFTER_LENGTH
        if json_length > body_length:
            if not self._discard(body_length):
                return None
            raise MalformedFrame(
                f"json_length {json_length} exceeds the {body_length} bytes left in the frame", correlation_id
            )
        metadata_bytes = bytearray(json_length)
        payload = np.empty(body_length - json_length, dtype=np.uint8)
        if not self._recv_exactly(memoryview(metadata_bytes)) or not self._recv_exactly(memoryview(payload)):
            return None
        try:
            message_type = MessageType(type_value)
        except ValueError:
            raise MalformedFrame(f"unknown message type {type_value}", correlation_id) from None
        try:
            metadata = json.loads(metadata_bytes) if json_length else {}
        except ValueError as error:
            raise MalformedFrame(f"metadata is not valid JSON: {error}", correlation_id) from None
        if not isinstance(metadata, dict):
            raise MalformedFrame("metadata must be a JSON object", correlation_id)
        return Frame(message_type, correlation_id, metadata, payload)

    def _recv_exactly(self, view: memoryview) -> bool:
        received = 0
        while received < len(view):
            count = self._sock.recv_into(view[received:], len(view) - received)
            if count == 0:
                return False
            received += count
        return True

    def _discard(self, count: int) -> bool:
        scratch = memoryview(bytearray(min(count, 1 << 16) or 1))
        while count > 0:
            chunk = min(count, len(scratch))
            if not self._recv_exactly(scratch[:chunk]):
                return False
            count -= chunk
        return True


# A queued send: a function producing the buffers to write. Deferring encoding to the writer
# thread lets callers hand over values (e.g. a device-side step counter) without waiting on them.
PendingSend = Callable[[], list[Buffer]]


class FrameWriter:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._queue: queue.SimpleQueue[PendingSend | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="sdserve-frame-writer", daemon=True)
        self._thread.start()

    def send(self, message_type: MessageType, correlation_id: int, metadata: dict[str, Any],
             payload: Sequence[Buffer] = ()) -> None:
        buffers = encode_frame(message_type, correlation_id, metadata, payload)
        self._queue.put(lambda: buffers)

    def send_later(self, pending: PendingSend) -> None:
        self._queue.put(pending)

    def close(self) -> None:
        """Sends everything queued so far, then stops the writer thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            pending = self._queue.get()
            if pending is None:
                return
            try:
                for buffer in pending():
                    self._sock.sendall(buffer)
            except OSError as error:
                log.error("cannot write to the core's socket: %s", error)
                return
            except Exception:
                log.exception("dropped an outgoing frame that could not be encoded")
