"""TensorFlow V2 checkpoints (``prefix.index`` + ``prefix.data-00000-of-00001``) read without TensorFlow.

``prefix.index`` is a LevelDB-style SSTable: uncompressed blocks of prefix-compressed (key, value)
entries, an index block pointing at them and a 48-byte footer ending in a magic number. The key ""
holds a BundleHeaderProto; every other key is a variable name whose value is a BundleEntryProto
(dtype = 1, shape = 2, shard_id = 3, offset = 4, size = 5, crc32c = 6, slices = 7) locating its raw
little-endian bytes in the data shard ``prefix.data-{shard:05d}-of-{num_shards:05d}``.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from .protobuf_wire import LENGTH, ProtobufError, iter_fields, packed_varints, read_varint, to_signed64

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # two block handles padded to 40 bytes + 8-byte magic
BLOCK_TRAILER = 5  # 1 byte compression type + 4 bytes masked crc32c
# tensorflow/core/framework/types.proto DataType -> numpy
DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 9: "<i8", 10: "?", 17: "<u2", 19: "<f2",
          22: "<u4", 23: "<u8"}


class CheckpointError(ValueError):
    """A TF checkpoint that is missing, corrupt or uses a feature this reader does not handle."""


def _block(buf: bytes, offset: int, size: int, path: str) -> list[tuple[bytes, bytes]]:
    """Entries of the block at (offset, size): keys are rebuilt from their shared prefixes."""
    if offset + size + BLOCK_TRAILER > len(buf):
        raise CheckpointError(f"{path}: block at {offset}+{size} runs past the end of the file (truncated)")
    if buf[offset + size] != 0:
        raise CheckpointError(f"{path}: compressed block (type {buf[offset + size]}); only uncompressed tables "
                              "(what TensorFlow writes for checkpoints) are supported")
    block = buf[offset:offset + size]
    num_restarts = struct.unpack_from("<I", block, size - 4)[0]
    limit = size - 4 - 4 * num_restarts
    entries, pos, key = [], 0, b""
    while pos < limit:
        shared, pos = read_varint(block, pos)
        unshared, pos = read_varint(block, pos)
        vlen, pos = read_varint(block, pos)
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        entries.append((key, block[pos:pos + vlen]))
        pos += vlen
    return entries


def _handle(value: bytes, pos: int = 0) -> tuple[int, int, int]:
    offset, pos = read_varint(value, pos)
    size, pos = read_varint(value, pos)
    return offset, size, pos


def read_index(path: str | os.PathLike[str]) -> dict[str, bytes]:
    """All (key, value) entries of an SSTable ``.index`` file, keys decoded as UTF-8."""
    path = Path(path)
    buf = path.read_bytes()
    if len(buf) < FOOTER_SIZE or struct.unpack_from("<Q", buf, len(buf) - 8)[0] != TABLE_MAGIC:
        raise CheckpointError(f"{path} is not a TensorFlow checkpoint index (no SSTable magic at its end)")
    footer = buf[len(buf) - FOOTER_SIZE:]
    try:
        _, _, pos = _handle(footer)  # metaindex handle (unused)
        index_offset, index_size, _ = _handle(footer, pos)
        out: dict[str, bytes] = {}
        for _, handle in _block(buf, index_offset, index_size, str(path)):
            offset, size, _ = _handle(handle)
            for key, value in _block(buf, offset, size, str(path)):
                out[key.decode("utf-8")] = value
    except (ProtobufError, struct.error, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is a corrupt checkpoint index ({e})") from None
    return out


def _entry(value: bytes, name: str) -> tuple[int, tuple[int, ...], int, int, int]:
    """(dtype, shape, shard, offset, size) of a BundleEntryProto."""
    dtype = shard = offset = size = 0
    shape: list[int] = []
    for field, wire, v in iter_fields(value):
        if field == 1:
            dtype = int(v)
        elif field == 2 and wire == LENGTH:
            for f2, w2, dim in iter_fields(v):  # TensorShapeProto.dim
                if f2 == 2 and w2 == LENGTH:
                    size_v = [to_signed64(x) for f3, _, x in iter_fields(dim) if f3 == 1]
                    shape.append(size_v[0] if size_v else 0)
        elif field == 3:
            shard = int(v)
        elif field == 4:
            offset = int(v)
        elif field == 5:
            size = int(v)
        elif field == 7:
            raise CheckpointError(f"variable {name!r} is stored in slices (partitioned); not supported")
    return dtype, tuple(shape), shard, offset, size


def _num_shards(header: bytes | None) -> int:
    if not header:
        return 1
    for field, _, v in iter_fields(header):
        if field == 1:
            return packed_varints(v)[0]  # type: ignore[arg-type]
    return 1


def checkpoint_prefix(path: str | os.PathLike[str]) -> Path:
    """The checkpoint prefix of ``x.ckpt``, ``x.ckpt.index`` or ``x.ckpt.data-00000-of-00001``."""
    s = str(path)
    if s.endswith(".index"):
        return Path(s[: -len(".index")])
    if ".data-" in Path(s).name:
        return Path(s[: s.rindex(".data-")])
    return Path(s)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every variable of a TF V2 checkpoint as a numpy array, keyed by its TF name."""
    prefix = checkpoint_prefix(path)
    index = Path(f"{prefix}.index")
    if not index.is_file():
        raise FileNotFoundError(f"TensorFlow checkpoint index not found: {index}")
    entries = read_index(index)
    shards = _num_shards(entries.pop("", None))
    data: dict[int, bytes] = {}
    out: dict[str, np.ndarray] = {}
    for name, value in sorted(entries.items()):
        dtype, shape, shard, offset, size = _entry(value, name)
        if dtype not in DTYPES:
            continue  # strings and other non-numeric bookkeeping
        if shard not in data:
            f = Path(f"{prefix}.data-{shard:05d}-of-{shards:05d}")
            if not f.is_file():
                raise FileNotFoundError(f"checkpoint data shard not found: {f}")
            data[shard] = f.read_bytes()
        if offset + size > len(data[shard]):
            raise CheckpointError(f"{prefix}: {name!r} lies at {offset}+{size}, past the end of shard {shard}")
        arr = np.frombuffer(data[shard], dtype=DTYPES[dtype], count=size // np.dtype(DTYPES[dtype]).itemsize,
                            offset=offset)
        expected = int(np.prod(shape)) if shape else 1
        if arr.size != expected:
            raise CheckpointError(f"{prefix}: {name!r} has {arr.size} values, its shape {shape} needs {expected}")
        out[name] = arr.reshape(shape).copy()
    return out
