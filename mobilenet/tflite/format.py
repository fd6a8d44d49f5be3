"""Read TF Lite ``.tflite`` flatbuffers without TensorFlow: tensors, constant data, quantization, operators.

A minimal reader for the public schema (tensorflow/lite/schema/schema.fbs, file identifier ``TFL3``);
it covers what inference graphs use: the main subgraph's tensors (name, shape, dtype, buffer data,
per-tensor or per-axis quantization), the operators in execution order with their builtin options
decoded to dicts, and custom operators with their FlexBuffer options (``TFLite_Detection_PostProcess``).

Stable API (other modules import it)::

    model = read_tflite("mobilenet_v1_0.25_128_quant.tflite")
    for op in model.operators:                      # execution order
        op.opcode, op.inputs, op.outputs, op.options  # "CONV_2D", (7, 3, 5), (6,), {"padding": "SAME", ...}
    t = model.tensors[op.inputs[1]]
    t.name, t.shape, t.dtype, t.scale, t.zero_point, t.quantized_dimension
    t.numpy()        # raw stored values (uint8 ...), None for activations
    t.dequantize()   # float32: (q - zero_point) * scale along quantized_dimension
    model.metadata   # {"min_runtime_version": b"1.5.0", "mobilenet": b"{...}"}: the named metadata buffers
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

FILE_IDENTIFIER = b"TFL3"

# schema.fbs `enum TensorType : byte`, as numpy dtypes (None: no numpy equivalent).
TENSOR_TYPES: tuple[tuple[str, str | None], ...] = (
    ("float32", "<f4"), ("float16", "<f2"), ("int32", "<i4"), ("uint8", "u1"), ("int64", "<i8"),
    ("string", None), ("bool", "?"), ("int16", "<i2"), ("complex64", "<c8"), ("int8", "i1"),
    ("float64", "<f8"), ("complex128", "<c16"), ("uint64", "<u8"), ("resource", None), ("variant", None),
    ("uint32", "<u4"), ("uint16", "<u2"), ("int4", None), ("bfloat16", None),
)

# schema.fbs `enum BuiltinOperator : int32`; index = code.
BUILTIN_OPERATORS: tuple[str, ...] = (
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "DEPTH_TO_SPACE", "DEQUANTIZE",
    "EMBEDDING_LOOKUP", "FLOOR", "FULLY_CONNECTED", "HASHTABLE_LOOKUP", "L2_NORMALIZATION", "L2_POOL_2D",
    "LOCAL_RESPONSE_NORMALIZATION", "LOGISTIC", "LSH_PROJECTION", "LSTM", "MAX_POOL_2D", "MUL", "RELU",
    "RELU_N1_TO_1", "RELU6", "RESHAPE", "RESIZE_BILINEAR", "RNN", "SOFTMAX", "SPACE_TO_DEPTH", "SVDF", "TANH",
    "CONCAT_EMBEDDINGS", "SKIP_GRAM", "CALL", "CUSTOM", "EMBEDDING_LOOKUP_SPARSE", "PAD",
    "UNIDIRECTIONAL_SEQUENCE_RNN", "GATHER", "BATCH_TO_SPACE_ND", "SPACE_TO_BATCH_ND", "TRANSPOSE", "MEAN",
    "SUB", "DIV", "SQUEEZE", "UNIDIRECTIONAL_SEQUENCE_LSTM", "STRIDED_SLICE", "BIDIRECTIONAL_SEQUENCE_RNN",
    "EXP", "TOPK_V2", "SPLIT", "LOG_SOFTMAX", "DELEGATE", "BIDIRECTIONAL_SEQUENCE_LSTM", "CAST", "PRELU",
    "MAXIMUM", "ARG_MAX", "MINIMUM", "LESS", "NEG", "PADV2", "GREATER", "GREATER_EQUAL", "LESS_EQUAL", "SELECT",
    "SLICE", "SIN", "TRANSPOSE_CONV", "SPARSE_TO_DENSE", "TILE", "EXPAND_DIMS", "EQUAL", "NOT_EQUAL", "LOG",
    "SUM", "SQRT", "RSQRT", "SHAPE", "POW", "ARG_MIN", "FAKE_QUANT", "REDUCE_PROD", "REDUCE_MAX", "PACK",
    "LOGICAL_OR", "ONE_HOT", "LOGICAL_AND", "LOGICAL_NOT", "UNPACK", "REDUCE_MIN", "FLOOR_DIV", "REDUCE_ANY",
    "SQUARE", "ZEROS_LIKE", "FILL", "FLOOR_MOD", "RANGE", "RESIZE_NEAREST_NEIGHBOR", "LEAKY_RELU",
    "SQUARED_DIFFERENCE", "MIRROR_PAD", "ABS", "SPLIT_V", "UNIQUE", "CEIL", "REVERSE_V2", "ADD_N", "GATHER_ND",
    "COS", "WHERE", "RANK", "ELU", "REVERSE_SEQUENCE", "MATRIX_DIAG", "QUANTIZE", "MATRIX_SET_DIAG", "ROUND",
    "HARD_SWISH", "IF", "WHILE", "NON_MAX_SUPPRESSION_V4", "NON_MAX_SUPPRESSION_V5", "SCATTER_ND", "SELECT_V2",
    "DENSIFY", "SEGMENT_SUM", "BATCH_MATMUL",
)

PADDING = ("SAME", "VALID")
ACTIVATIONS = ("NONE", "RELU", "RELU_N1_TO_1", "RELU6", "TANH", "SIGN_BIT")

# `union BuiltinOptions` members this reader decodes: union type -> fields in schema order as
# (name, kind, default). Kinds: b (int8/enum byte), i (int32), f (float32), ? (bool), [i] (int32 vector),
# "pad"/"act" (enum bytes decoded to names). Options not listed come back as {"_type": N}.
_OPTIONS: dict[int, tuple[tuple[str, str, Any], ...]] = {
    1: (("padding", "pad", 0), ("stride_w", "i", 0), ("stride_h", "i", 0), ("fused_activation_function", "act", 0),
        ("dilation_w_factor", "i", 1), ("dilation_h_factor", "i", 1)),  # Conv2DOptions
    2: (("padding", "pad", 0), ("stride_w", "i", 0), ("stride_h", "i", 0), ("depth_multiplier", "i", 0),
        ("fused_activation_function", "act", 0), ("dilation_w_factor", "i", 1),
        ("dilation_h_factor", "i", 1)),  # DepthwiseConv2DOptions
    5: (("padding", "pad", 0), ("stride_w", "i", 0), ("stride_h", "i", 0), ("filter_width", "i", 0),
        ("filter_height", "i", 0), ("fused_activation_function", "act", 0)),  # Pool2DOptions
    8: (("fused_activation_function", "act", 0), ("weights_format", "b", 0), ("keep_num_dims", "?", False),
        ("asymmetric_quantize_inputs", "?", False)),  # FullyConnectedOptions
    9: (("beta", "f", 0.0),),  # SoftmaxOptions
    10: (("axis", "i", 0), ("fused_activation_function", "act", 0)),  # ConcatenationOptions
    11: (("fused_activation_function", "act", 0),),  # AddOptions
    15: (("new_height", "i", 0), ("new_width", "i", 0), ("align_corners", "?", False),
         ("half_pixel_centers", "?", False)),  # ResizeBilinearOptions (sizes deprecated)
    17: (("new_shape", "[i]", ()),),  # ReshapeOptions
    21: (("fused_activation_function", "act", 0),),  # MulOptions
    22: (),  # PadOptions
    27: (("keep_dims", "?", False),),  # ReducerOptions (MEAN, SUM, ...)
    28: (("fused_activation_function", "act", 0),),  # SubOptions
    30: (("squeeze_dims", "[i]", ()),),  # SqueezeOptions
}


class TFLiteFormatError(ValueError):
    """The file is not a TF Lite flatbuffer, or is truncated/corrupt."""


# ---------------------------------------------------------------------------------------------
# Flatbuffer primitives: a table is (buffer, position); fields are looked up through its vtable.
# ---------------------------------------------------------------------------------------------
class _Table:
    __slots__ = ("buf", "pos", "_vt", "_vt_len")

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf, self.pos = buf, pos
        self._vt = pos - _read(buf, "<i", pos)
        self._vt_len = _read(buf, "<H", self._vt)

    def _field(self, i: int) -> int:
        """Absolute position of field ``i``, or 0 when the field is absent (use its default)."""
        slot = 4 + 2 * i
        if slot >= self._vt_len:
            return 0
        off = _read(self.buf, "<H", self._vt + slot)
        return self.pos + off if off else 0

    def scalar(self, i: int, fmt: str, default: Any) -> Any:
        p = self._field(i)
        return _read(self.buf, fmt, p) if p else default

    def _target(self, i: int) -> int:
        p = self._field(i)
        return p + _read(self.buf, "<I", p) if p else 0

    def table(self, i: int) -> _Table | None:
        t = self._target(i)
        return _Table(self.buf, t) if t else None

    def string(self, i: int) -> str | None:
        t = self._target(i)
        if not t:
            return None
        n = _read(self.buf, "<I", t)
        return self.buf[t + 4:t + 4 + n].decode("utf-8", errors="replace")

    def vector(self, i: int, fmt: str) -> tuple[Any, ...]:
        """A vector of scalars, e.g. fmt "<i" for int32."""
        t = self._target(i)
        if not t:
            return ()
        n = _read(self.buf, "<I", t)
        size = struct.calcsize(fmt)
        _check_range(self.buf, t + 4, n * size)
        return struct.unpack_from(f"<{n}{fmt[-1]}", self.buf, t + 4)

    def bytes_(self, i: int) -> memoryview | None:
        t = self._target(i)
        if not t:
            return None
        n = _read(self.buf, "<I", t)
        _check_range(self.buf, t + 4, n)
        return memoryview(self.buf)[t + 4:t + 4 + n]

    def tables(self, i: int) -> list[_Table]:
        t = self._target(i)
        if not t:
            return []
        n = _read(self.buf, "<I", t)
        out = []
        for k in range(n):
            p = t + 4 + 4 * k
            out.append(_Table(self.buf, p + _read(self.buf, "<I", p)))
        return out


def _check_range(buf: bytes, pos: int, size: int) -> None:
    if pos < 0 or pos + size > len(buf):
        raise TFLiteFormatError(f"offset {pos}+{size} is outside the {len(buf)}-byte file (truncated or corrupt)")


def _read(buf: bytes, fmt: str, pos: int) -> Any:
    _check_range(buf, pos, struct.calcsize(fmt))
    return struct.unpack_from(fmt, buf, pos)[0]


# ---------------------------------------------------------------------------------------------
# The model objects.
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TFLiteTensor:
    """One tensor of a subgraph. ``data`` holds the raw little-endian bytes of constants (else None)."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str  # "float32", "uint8", "int8", "int32", ...
    buffer: int
    data: bytes | None
    scale: np.ndarray | None = None  # float32 (1,) per-tensor or (C,) per-axis
    zero_point: np.ndarray | None = None  # int64, same length as scale
    quantized_dimension: int = 0
    quant_min: np.ndarray | None = None  # the float range recorded by the converter, if any
    quant_max: np.ndarray | None = None

    @property
    def is_constant(self) -> bool:
        return self.data is not None and len(self.data) > 0

    @property
    def is_quantized(self) -> bool:
        return self.scale is not None and self.scale.size > 0

    def numpy(self) -> np.ndarray | None:
        """The stored values with their stored dtype and shape (None for activations)."""
        if not self.is_constant:
            return None
        np_dtype = dict(TENSOR_TYPES).get(self.dtype)
        if np_dtype is None:
            raise TFLiteFormatError(f"tensor {self.name!r}: dtype {self.dtype} has no numpy equivalent")
        arr = np.frombuffer(self.data, dtype=np_dtype)
        expected = int(np.prod(self.shape)) if self.shape else 1
        if arr.size != expected:
            raise TFLiteFormatError(
                f"tensor {self.name!r}: buffer holds {arr.size} {self.dtype} values, "
                f"shape {self.shape} needs {expected}")
        return arr.reshape(self.shape).copy()

    def dequantize(self) -> np.ndarray | None:
        """float32 values: ``(q - zero_point) * scale``, broadcast along ``quantized_dimension``."""
        q = self.numpy()
        if q is None:
            return None
        if not self.is_quantized or self.dtype in ("float32", "float16", "float64"):
            return q.astype(np.float32)
        scale, zp = self.scale.astype(np.float64), self.zero_point.astype(np.float64)
        if scale.size > 1:  # per-axis: broadcast along the quantized dimension
            view = [1] * q.ndim
            view[self.quantized_dimension] = scale.size
            scale, zp = scale.reshape(view), zp.reshape(view)
        return ((q.astype(np.float64) - zp) * scale).astype(np.float32)


@dataclass(frozen=True, eq=False)
class TFLiteOperator:
    """One operator: ``opcode`` is the builtin name ("CONV_2D") or "CUSTOM" with ``custom_code`` set."""

    index: int
    opcode: str
    inputs: tuple[int, ...]  # tensor indices; -1 marks an omitted optional input
    outputs: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)
    custom_code: str | None = None
    custom_options: bytes | None = None
    version: int = 1

    def custom_options_dict(self) -> Any:
        """Custom options decoded from their FlexBuffer (e.g. the detection post-processing settings)."""
        if not self.custom_options:
            return {}
        from .flexbuffers import decode_flexbuffer

        return decode_flexbuffer(self.custom_options)


@dataclass(frozen=True, eq=False)
class TFLiteSubgraph:
    name: str
    tensors: list[TFLiteTensor]
    operators: list[TFLiteOperator]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class TFLiteModel:
    """A parsed ``.tflite`` file. ``tensors``/``operators``/``inputs``/``outputs`` are the main subgraph's."""

    path: str
    version: int
    description: str
    subgraphs: list[TFLiteSubgraph]
    metadata: dict[str, bytes] = field(default_factory=dict)  # the model's named metadata buffers

    @property
    def main(self) -> TFLiteSubgraph:
        return self.subgraphs[0]

    @property
    def tensors(self) -> list[TFLiteTensor]:
        return self.main.tensors

    @property
    def operators(self) -> list[TFLiteOperator]:
        return self.main.operators

    @property
    def inputs(self) -> list[TFLiteTensor]:
        return [self.main.tensors[i] for i in self.main.inputs]

    @property
    def outputs(self) -> list[TFLiteTensor]:
        return [self.main.tensors[i] for i in self.main.outputs]

    def tensor(self, name: str) -> TFLiteTensor:
        """The main-subgraph tensor called ``name`` (KeyError naming near misses when absent)."""
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(f"{self.path}: no tensor named {name!r}")

    @cached_property
    def producers(self) -> dict[int, TFLiteOperator]:
        """Main-subgraph tensor index -> the operator that writes it (absent: an input or a constant)."""
        return {o: op for op in self.operators for o in op.outputs}

    def stored(self, index: int) -> TFLiteTensor:
        """The tensor holding the stored values of input ``index``, looking through a ``DEQUANTIZE`` op
        (float16/int8 weight storage)."""
        t = self.tensors[index]
        op = self.producers.get(index)
        if not t.is_constant and op is not None and op.opcode == "DEQUANTIZE":
            return self.tensors[op.inputs[0]]
        return t

    def opcode_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.operators:
            key = op.custom_code if op.opcode == "CUSTOM" and op.custom_code else op.opcode
            counts[key] = counts.get(key, 0) + 1
        return counts


def _decode_options(op: _Table) -> dict[str, Any]:
    opt_type = op.scalar(3, "<B", 0)
    if opt_type == 0:
        return {}
    table = op.table(4)
    spec = _OPTIONS.get(opt_type)
    if spec is None or table is None:
        return {"_type": opt_type}
    out: dict[str, Any] = {}
    for i, (name, kind, default) in enumerate(spec):
        if kind == "[i]":
            out[name] = table.vector(i, "<i")
        elif kind in ("pad", "act"):
            v = table.scalar(i, "<b", default)
            names = PADDING if kind == "pad" else ACTIVATIONS
            out[name] = names[v] if 0 <= v < len(names) else v
        else:
            fmt = {"b": "<b", "i": "<i", "f": "<f", "?": "<?"}[kind]
            out[name] = table.scalar(i, fmt, default)
    return out


def _buffer_bytes(buf: bytes, buffers: list[_Table], index: int, name: str) -> bytes | None:
    if index >= len(buffers):
        raise TFLiteFormatError(f"tensor {name!r} refers to buffer {index}, the file has {len(buffers)}")
    b = buffers[index]
    data = b.bytes_(0)
    if data is not None and len(data):
        return bytes(data)
    # Models over 2 GB keep data outside the flatbuffer: Buffer.offset/size from the file start.
    offset, size = b.scalar(1, "<Q", 0), b.scalar(2, "<Q", 0)
    if offset > 1 and size:
        _check_range(buf, offset, size)
        return bytes(buf[offset:offset + size])
    return None


def parse_tflite(buf: bytes, path: str = "<bytes>") -> TFLiteModel:
    """Parse the bytes of a ``.tflite`` file."""
    if len(buf) < 8:
        raise TFLiteFormatError(f"{path} is not a TF Lite model: only {len(buf)} bytes")
    if buf[4:8] != FILE_IDENTIFIER:
        raise TFLiteFormatError(
            f"{path} is not a TF Lite model: file identifier {bytes(buf[4:8])!r}, expected {FILE_IDENTIFIER!r}")
    try:
        root = _Table(buf, _read(buf, "<I", 0))
        opcodes = []
        for oc in root.tables(1):
            code = max(oc.scalar(0, "<b", 0), oc.scalar(3, "<i", 0))  # deprecated byte code vs int32 code
            name = BUILTIN_OPERATORS[code] if 0 <= code < len(BUILTIN_OPERATORS) else f"BUILTIN_{code}"
            opcodes.append((name, oc.string(1), oc.scalar(2, "<i", 1)))
        buffers = root.tables(4)
        subgraphs = [_parse_subgraph(buf, sg, opcodes, buffers) for sg in root.tables(2)]
        metadata = {m.string(0) or "": _buffer_bytes(buf, buffers, m.scalar(1, "<I", 0), "metadata") or b""
                    for m in root.tables(6)}
    except (struct.error, IndexError, UnicodeDecodeError) as e:
        raise TFLiteFormatError(f"{path} is a corrupt TF Lite file ({e})") from None
    if not subgraphs:
        raise TFLiteFormatError(f"{path} has no subgraphs")
    return TFLiteModel(path=path, version=root.scalar(0, "<I", 0), description=root.string(3) or "",
                       subgraphs=subgraphs, metadata=metadata)


def _parse_subgraph(buf: bytes, sg: _Table, opcodes: list[tuple[str, str | None, int]],
                    buffers: list[_Table]) -> TFLiteSubgraph:
    tensors = []
    for i, t in enumerate(sg.tables(0)):
        name = t.string(3) or f"tensor_{i}"
        type_code = t.scalar(1, "<b", 0)
        dtype = TENSOR_TYPES[type_code][0] if 0 <= type_code < len(TENSOR_TYPES) else f"type_{type_code}"
        buffer = t.scalar(2, "<I", 0)
        q = t.table(4)
        scale = zp = qmin = qmax = None
        qdim = 0
        if q is not None:
            s = q.vector(2, "<f")
            if s:
                scale = np.asarray(s, dtype=np.float32)
                z = q.vector(3, "<q")
                zp = np.asarray(z, dtype=np.int64) if z else np.zeros(len(s), dtype=np.int64)
            mn, mx = q.vector(0, "<f"), q.vector(1, "<f")
            qmin = np.asarray(mn, dtype=np.float32) if mn else None
            qmax = np.asarray(mx, dtype=np.float32) if mx else None
            qdim = q.scalar(6, "<i", 0)
        tensors.append(TFLiteTensor(
            index=i, name=name, shape=tuple(t.vector(0, "<i")), dtype=dtype, buffer=buffer,
            data=_buffer_bytes(buf, buffers, buffer, name), scale=scale, zero_point=zp,
            quantized_dimension=qdim, quant_min=qmin, quant_max=qmax))
    operators = []
    for i, op in enumerate(sg.tables(3)):
        idx = op.scalar(0, "<I", 0)
        if idx >= len(opcodes):
            raise TFLiteFormatError(f"operator {i} uses opcode {idx}, the file defines {len(opcodes)}")
        name, custom_code, version = opcodes[idx]
        custom = op.bytes_(5)
        operators.append(TFLiteOperator(
            index=i, opcode=name, inputs=op.vector(1, "<i"), outputs=op.vector(2, "<i"),
            options=_decode_options(op), custom_code=custom_code,
            custom_options=bytes(custom) if custom is not None else None, version=version))
    return TFLiteSubgraph(name=sg.string(4) or "", tensors=tensors, operators=operators,
                          inputs=sg.vector(1, "<i"), outputs=sg.vector(2, "<i"))


def read_tflite(path: str | os.PathLike[str]) -> TFLiteModel:
    """Read a ``.tflite`` file (see the module docstring for the API)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TF Lite file not found: {path}")
    return parse_tflite(path.read_bytes(), str(path))


def read_labelmap(path: str | os.PathLike[str], num_classes: int) -> list[str]:
    """TF Lite's labelmap.txt: line 0 is the background ('???'), line k+1 names class k."""
    lines = Path(path).read_text().splitlines()
    if len(lines) < num_classes + 1:
        raise ValueError(f"{path}: {len(lines)} lines, expected {num_classes + 1} (background + classes)")
    return lines[1:num_classes + 1]
