"""Protocol Buffers wire format, read without generated code (for TF checkpoints and ``.caffemodel``).

A message is a sequence of (field number, wire type, value); we decode the four wire types and
leave meaning to the caller, which knows the schema it expects. Reference: protobuf.dev "Encoding".
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


class ProtobufError(ValueError):
    """Bytes that are not valid protobuf wire format (truncated or corrupt)."""


def read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """(value, next position) of the base-128 varint at ``pos``."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtobufError(f"truncated varint at offset {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtobufError(f"varint longer than 10 bytes at offset {pos}")


def iter_fields(buf: bytes | memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """Yield (field number, wire type, value): ints for VARINT/FIXED*, a memoryview for LENGTH."""
    view = memoryview(buf)
    pos, end = 0, len(view)
    while pos < end:
        key, pos = read_varint(view, pos)
        field, wire = key >> 3, key & 7
        if wire == VARINT:
            value, pos = read_varint(view, pos)
        elif wire == FIXED64:
            if pos + 8 > end:
                raise ProtobufError(f"truncated fixed64 field {field} at offset {pos}")
            value = struct.unpack_from("<Q", view, pos)[0]
            pos += 8
        elif wire == LENGTH:
            n, pos = read_varint(view, pos)
            if pos + n > end:
                raise ProtobufError(f"field {field} claims {n} bytes at offset {pos}, only {end - pos} left")
            value = view[pos:pos + n]
            pos += n
        elif wire == FIXED32:
            if pos + 4 > end:
                raise ProtobufError(f"truncated fixed32 field {field} at offset {pos}")
            value = struct.unpack_from("<I", view, pos)[0]
            pos += 4
        else:
            raise ProtobufError(f"unsupported wire type {wire} (field {field}) at offset {pos}")
        yield field, wire, value


def packed_varints(value: int | memoryview) -> list[int]:
    """A repeated integer field: one unpacked varint, or a packed run of them."""
    if isinstance(value, int):
        return [value]
    out, pos = [], 0
    while pos < len(value):
        v, pos = read_varint(value, pos)
        out.append(v)
    return out


def packed_floats(value: int | memoryview, wire: int) -> np.ndarray:
    """A repeated float field: one FIXED32 value, or a packed little-endian float32 run."""
    if wire == FIXED32:
        return np.frombuffer(struct.pack("<I", int(value)), dtype="<f4")
    if len(value) % 4:  # type: ignore[arg-type]
        raise ProtobufError(f"packed float field of {len(value)} bytes is not a multiple of 4")  # type: ignore[arg-type]
    return np.frombuffer(bytes(value), dtype="<f4")  # type: ignore[arg-type]


def to_signed64(v: int) -> int:
    """Reinterpret a varint-decoded int64 (two's complement) as signed."""
    return v - (1 << 64) if v >= 1 << 63 else v
