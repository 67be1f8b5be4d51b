"""Tensor bytes on the wire <-> numpy arrays. Fixed-size tensors become zero-copy views of the
received payload; BYTES tensors use Triton's form (each element: 4-byte little-endian length,
then its bytes). See docs/backend-protocol.md, "Messages"."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import numpy.typing as npt

# KServe v2 datatype names. numpy has no bfloat16, so BF16 travels as its raw 16-bit patterns.
KSERVE_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),
    "BYTES": np.dtype(np.object_),
}

# Tensors inside a payload start at multiples of this, so numpy and torch views are aligned.
PAYLOAD_ALIGNMENT = 64

_LENGTH = struct.Struct("<I")


def kserve_datatype_of(array: npt.NDArray[Any]) -> str:
    """The KServe datatype name for a numpy array; str/bytes/object arrays are BYTES."""
    kind = array.dtype.kind
    if kind in ("O", "S", "U"):
        return "BYTES"
    for name, dtype in KSERVE_TO_NUMPY.items():
        if name != "BF16" and array.dtype == dtype:
            return name
    raise TypeError(f"numpy dtype {array.dtype} has no KServe datatype")


def element_count(shape: list[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def serialize_byte_tensor(array: npt.NDArray[Any]) -> bytes:
    """Flattens a str/bytes/object array (row-major) into Triton's length-prefixed BYTES form."""
    parts: list[bytes] = []
    for element in array.reshape(-1):
        if isinstance(element, str):
            element = element.encode("utf-8")
        elif not isinstance(element, (bytes, bytearray, memoryview)):
            element = str(element).encode("utf-8")
        parts.append(_LENGTH.pack(len(element)))
        parts.append(bytes(element))
    return b"".join(parts)


def deserialize_bytes_tensor(buffer: bytes | bytearray | memoryview | npt.NDArray[np.uint8]) -> npt.NDArray[np.object_]:
    """Parses Triton's BYTES form into a 1-D object array of `bytes`."""
    view = memoryview(buffer).cast("B")
    elements: list[bytes] = []
    position = 0
    while position < len(view):
        if position + 4 > len(view):
            raise ValueError(f"BYTES tensor is truncated: a length prefix at byte {position} needs 4 bytes")
        (length,) = _LENGTH.unpack_from(view, position)
        position += 4
        if position + length > len(view):
            raise ValueError(
                f"BYTES tensor is truncated: element at byte {position} declares {length} bytes, "
                f"{len(view) - position} remain"
            )
        elements.append(bytes(view[position : position + length]))
        position += length
    result = np.empty(len(elements), dtype=np.object_)
    result[:] = elements
    return result


def array_from_payload(payload: npt.NDArray[np.uint8], name: str, datatype: str, shape: list[int],
                       offset: int, length: int) -> npt.NDArray[Any]:
    """A view of one tensor inside a received payload (a copy only for BYTES)."""
    dtype = KSERVE_TO_NUMPY.get(datatype)
    if dtype is None:
        raise ValueError(f"tensor '{name}': datatype '{datatype}' is not a KServe datatype")
    if any(not isinstance(dim, int) or dim < 0 for dim in shape):
        raise ValueError(f"tensor '{name}': shape {shape} must be non-negative integers")
    if offset < 0 or length < 0 or offset + length > payload.nbytes:
        raise ValueError(
            f"tensor '{name}': bytes [{offset}, {offset + length}) lie outside the {payload.nbytes}-byte payload"
        )
    raw = payload[offset : offset + length]
    count = element_count(shape)
    if datatype == "BYTES":
        elements = deserialize_bytes_tensor(raw)
        if elements.size != count:
            raise ValueError(f"tensor '{name}': shape {shape} needs {count} elements, BYTES data holds {elements.size}")
        return elements.reshape(shape)
    if length != count * dtype.itemsize:
        raise ValueError(
            f"tensor '{name}': shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, got {length}"
        )
    return raw.view(dtype).reshape(shape)


def array_to_wire(array: npt.NDArray[Any], datatype: str) -> memoryview:
    """The tensor's bytes as they go on the wire (no copy when the array is already contiguous)."""
    if datatype == "BYTES":
        return memoryview(serialize_byte_tensor(array))
    contiguous = np.ascontiguousarray(array, dtype=KSERVE_TO_NUMPY[datatype])
    return memoryview(contiguous.reshape(-1).view(np.uint8))


def padding_after(length: int) -> int:
    return -length % PAYLOAD_ALIGNMENT
