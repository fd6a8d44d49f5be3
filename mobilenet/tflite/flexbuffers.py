"""Decode FlexBuffers (schema-less FlatBuffers): TF Lite stores custom-operator options this way.

Only reading is needed: e.g. ``TFLite_Detection_PostProcess`` keeps ``max_detections``, ``y_scale``,
``nms_iou_threshold`` ... in a FlexBuffer map. Format reference: flatbuffers.dev "FlexBuffers"
(internals section). The root sits at the end of the buffer: ``[... value][packed type][byte width]``.
"""

from __future__ import annotations

import struct
from typing import Any

# Value types (the high 6 bits of a packed type byte; the low 2 bits are log2 of the bit width).
_NULL, _INT, _UINT, _FLOAT, _KEY, _STRING = 0, 1, 2, 3, 4, 5
_INDIRECT_INT, _INDIRECT_UINT, _INDIRECT_FLOAT = 6, 7, 8
_MAP, _VECTOR, _VECTOR_INT, _VECTOR_UINT, _VECTOR_FLOAT, _VECTOR_KEY = 9, 10, 11, 12, 13, 14
_VECTOR_STRING_DEPRECATED = 15
_FIXED_TYPED = range(16, 25)  # VECTOR_{INT,UINT,FLOAT}{2,3,4}
_BLOB, _BOOL, _VECTOR_BOOL = 25, 26, 36


class FlexBufferError(ValueError):
    """The bytes are not a FlexBuffer this reader understands."""


def _uint(buf: bytes, pos: int, width: int) -> int:
    if pos < 0 or pos + width > len(buf):
        raise FlexBufferError(f"read of {width} bytes at offset {pos} is outside the {len(buf)}-byte buffer")
    return int.from_bytes(buf[pos:pos + width], "little", signed=False)


def _int(buf: bytes, pos: int, width: int) -> int:
    _uint(buf, pos, width)  # bounds check
    return int.from_bytes(buf[pos:pos + width], "little", signed=True)


def _float(buf: bytes, pos: int, width: int) -> float:
    _uint(buf, pos, width)
    if width == 4:
        return struct.unpack_from("<f", buf, pos)[0]
    if width == 8:
        return struct.unpack_from("<d", buf, pos)[0]
    raise FlexBufferError(f"unsupported float width {width} at offset {pos}")


def _cstring(buf: bytes, pos: int) -> str:
    end = buf.find(b"\0", pos)
    if end < 0:
        raise FlexBufferError(f"unterminated key at offset {pos}")
    return buf[pos:end].decode("utf-8")


def _indirect(buf: bytes, pos: int, width: int) -> int:
    """Target of an offset stored at ``pos`` (offsets point backwards)."""
    return pos - _uint(buf, pos, width)


def _value(buf: bytes, pos: int, parent_width: int, packed: int) -> Any:
    """Decode the value stored at ``pos`` with the parent's byte width and its packed type byte."""
    vtype, child_width = packed >> 2, 1 << (packed & 3)
    if vtype == _NULL:
        return None
    if vtype == _INT:
        return _int(buf, pos, parent_width)
    if vtype == _UINT:
        return _uint(buf, pos, parent_width)
    if vtype == _FLOAT:
        return _float(buf, pos, parent_width)
    if vtype == _BOOL:
        return bool(_uint(buf, pos, parent_width))
    target = _indirect(buf, pos, parent_width)
    if vtype == _INDIRECT_INT:
        return _int(buf, target, child_width)
    if vtype == _INDIRECT_UINT:
        return _uint(buf, target, child_width)
    if vtype == _INDIRECT_FLOAT:
        return _float(buf, target, child_width)
    if vtype == _KEY:
        return _cstring(buf, target)
    if vtype in (_STRING, _BLOB):
        size = _uint(buf, target - child_width, child_width)
        data = bytes(buf[target:target + size])
        return data.decode("utf-8") if vtype == _STRING else data
    if vtype == _VECTOR:
        return _untyped_vector(buf, target, child_width)
    if vtype == _MAP:
        keys_at = _indirect(buf, target - 3 * child_width, child_width)
        keys_width = _uint(buf, target - 2 * child_width, child_width)
        keys = _typed_vector(buf, keys_at, keys_width, _KEY)
        values = _untyped_vector(buf, target, child_width)
        if len(keys) != len(values):
            raise FlexBufferError(f"map at offset {target} has {len(keys)} keys but {len(values)} values")
        return dict(zip(keys, values, strict=True))
    if vtype in (_VECTOR_INT, _VECTOR_UINT, _VECTOR_FLOAT, _VECTOR_KEY, _VECTOR_STRING_DEPRECATED, _VECTOR_BOOL):
        elem = {_VECTOR_INT: _INT, _VECTOR_UINT: _UINT, _VECTOR_FLOAT: _FLOAT, _VECTOR_KEY: _KEY,
                _VECTOR_STRING_DEPRECATED: _STRING, _VECTOR_BOOL: _BOOL}[vtype]
        return _typed_vector(buf, target, child_width, elem)
    if vtype in _FIXED_TYPED:
        k = vtype - 16
        elem, n = (_INT, _UINT, _FLOAT)[k % 3], 2 + k // 3
        return [_scalar(buf, target + i * child_width, child_width, elem) for i in range(n)]
    raise FlexBufferError(f"unknown FlexBuffer value type {vtype} at offset {pos}")


def _scalar(buf: bytes, pos: int, width: int, elem: int) -> Any:
    if elem == _INT:
        return _int(buf, pos, width)
    if elem == _UINT:
        return _uint(buf, pos, width)
    if elem == _BOOL:
        return bool(_uint(buf, pos, width))
    if elem == _FLOAT:
        return _float(buf, pos, width)
    if elem == _KEY:
        return _cstring(buf, _indirect(buf, pos, width))
    # deprecated typed vector of strings: each element is an offset to a sized string
    target = _indirect(buf, pos, width)
    size = _uint(buf, target - width, width)
    return bytes(buf[target:target + size]).decode("utf-8")


def _typed_vector(buf: bytes, pos: int, width: int, elem: int) -> list[Any]:
    size = _uint(buf, pos - width, width)
    return [_scalar(buf, pos + i * width, width, elem) for i in range(size)]


def _untyped_vector(buf: bytes, pos: int, width: int) -> list[Any]:
    # layout: [size][elem 0 .. elem n-1 (width bytes each)][packed type 0 .. n-1 (1 byte each)]
    size = _uint(buf, pos - width, width)
    types_at = pos + size * width
    return [_value(buf, pos + i * width, width, _uint(buf, types_at + i, 1)) for i in range(size)]


def decode_flexbuffer(data: bytes) -> Any:
    """The root value of a FlexBuffer (maps become dicts, vectors lists, blobs bytes)."""
    buf = bytes(data)
    if len(buf) < 3:
        raise FlexBufferError(f"a FlexBuffer needs at least 3 bytes, got {len(buf)}")
    root_width = buf[-1]
    if root_width not in (1, 2, 4, 8):
        raise FlexBufferError(f"invalid FlexBuffer root width {root_width}")
    packed = buf[-2]
    return _value(buf, len(buf) - 2 - root_width, root_width, packed)
