"""Frame encoding/decoding over a real socket pair, and BYTES (de)serialisation."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from sdserve_backend.ipc import FrameReader, FrameWriter, MalformedFrame, encode_frame
from sdserve_backend.messages import MessageType
from sdserve_backend.tensor_codec import (
    array_from_payload,
    array_to_wire,
    deserialize_bytes_tensor,
    serialize_byte_tensor,
)


@pytest.fixture
def socket_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield left, right
    left.close()
    right.close()


def send_all(sock: socket.socket, buffers: list) -> None:
    for buffer in buffers:
        sock.sendall(buffer)


def test_frame_round_trip_keeps_type_correlation_metadata_and_payload(socket_pair) -> None:
    sender, receiver = socket_pair
    tensor = np.arange(12, dtype=np.float32).reshape(3, 4)
    send_all(sender, encode_frame(MessageType.EXECUTE_REQUEST, 2**40 + 7, {"a": [1, "x"]}, [array_to_wire(tensor, "FP32")]))

    frame = FrameReader(receiver).read()

    assert frame is not None
    assert frame.type is MessageType.EXECUTE_REQUEST
    assert frame.correlation_id == 2**40 + 7
    assert frame.metadata == {"a": [1, "x"]}
    view = array_from_payload(frame.payload, "t", "FP32", [3, 4], 0, 48)
    np.testing.assert_array_equal(view, tensor)


def test_tensor_views_share_the_received_payload(socket_pair) -> None:
    sender, receiver = socket_pair
    send_all(sender, encode_frame(MessageType.EXECUTE_REQUEST, 1, {}, [np.ones(4, np.int32).tobytes()]))
    frame = FrameReader(receiver).read()
    assert frame is not None

    view = array_from_payload(frame.payload, "t", "INT32", [2, 2], 0, 16)
    view[0, 0] = 9

    assert np.shares_memory(view, frame.payload)
    assert frame.payload[:4].view(np.int32)[0] == 9


def test_frames_split_across_many_small_writes_are_reassembled(socket_pair) -> None:
    sender, receiver = socket_pair
    data = b"".join(bytes(b) for b in encode_frame(MessageType.HEALTH_REQUEST, 3, {"k": "v"}, [b"abc"]))
    for index in range(len(data)):
        sender.sendall(data[index : index + 1])

    frame = FrameReader(receiver).read()

    assert frame is not None and frame.correlation_id == 3 and bytes(frame.payload) == b"abc"


def test_reader_returns_none_when_the_peer_closes(socket_pair) -> None:
    sender, receiver = socket_pair
    sender.close()
    assert FrameReader(receiver).read() is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (struct.pack("<I", 3) + b"xyz", "below the 16-byte minimum"),
        (struct.pack("<IHHQI", 16 + 2, 99, 0, 5, 2) + b"{}", "unknown message type 99"),
        (struct.pack("<IHHQI", 16 + 1, 6, 0, 5, 9) + b"x", "json_length 9 exceeds"),
        (struct.pack("<IHHQI", 16 + 3, 6, 0, 5, 3) + b"{x}", "not valid JSON"),
        (struct.pack("<IHHQI", 16 + 2, 6, 0, 5, 2) + b"[]", "must be a JSON object"),
    ],
)
def test_malformed_frames_are_rejected_and_the_stream_stays_in_sync(socket_pair, raw: bytes, message: str) -> None:
    sender, receiver = socket_pair
    sender.sendall(raw)
    send_all(sender, encode_frame(MessageType.HEALTH_REQUEST, 42, {}))
    reader = FrameReader(receiver)

    with pytest.raises(MalformedFrame, match=message):
        reader.read()
    frame = reader.read()

    assert frame is not None and frame.type is MessageType.HEALTH_REQUEST and frame.correlation_id == 42


def test_writer_keeps_frames_from_several_threads_whole_and_in_per_thread_order(socket_pair) -> None:
    sender, receiver = socket_pair
    writer = FrameWriter(sender)

    def send_ten(thread_index: int) -> None:
        for step in range(10):
            writer.send(MessageType.PROGRESS_NOTIFY, thread_index, {"step": step}, [bytes(1000)])

    threads = [threading.Thread(target=send_ten, args=(index,)) for index in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    reader = FrameReader(receiver)
    received = [reader.read() for _ in range(50)]

    steps_by_thread: dict[int, list[int]] = {}
    for frame in received:
        assert frame is not None and frame.payload.nbytes == 1000
        steps_by_thread.setdefault(frame.correlation_id, []).append(frame.metadata["step"])
    assert steps_by_thread == {index: list(range(10)) for index in range(5)}


def test_bytes_tensor_round_trip_keeps_elements_and_shape() -> None:
    elements = np.array([[b"a cat", b""], ["caf\u00e9", b"\x00\xff"]], dtype=np.object_)

    wire = serialize_byte_tensor(elements)
    parsed = deserialize_bytes_tensor(wire)

    assert wire[:4] == struct.pack("<I", 5)
    assert parsed.tolist() == [b"a cat", b"", "caf\u00e9".encode(), b"\x00\xff"]


def test_truncated_bytes_tensor_is_an_error_naming_the_position() -> None:
    with pytest.raises(ValueError, match="declares 10 bytes, 2 remain"):
        deserialize_bytes_tensor(struct.pack("<I", 10) + b"ab")


def test_tensor_whose_length_disagrees_with_its_shape_is_rejected() -> None:
    payload = np.zeros(12, dtype=np.uint8)
    with pytest.raises(ValueError, match=r"shape \[4\] of FP32 needs 16 bytes, got 12"):
        array_from_payload(payload, "x", "FP32", [4], 0, 12)
    with pytest.raises(ValueError, match="outside the 12-byte payload"):
        array_from_payload(payload, "x", "UINT8", [8], 8, 8)
