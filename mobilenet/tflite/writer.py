"""Write TF Lite ``.tflite`` flatbuffers: a graph of tensors and operators, built up and serialised.

The reader (:mod:`mobilenet.tflite.format`) needs nothing; writing uses the schema's object API that the LiteRT
interpreter package ships (``ai_edge_litert.schema_py_generated``: the public ``schema.fbs`` compiled by
flatc, the same bindings TF's own metadata writers use) and its ``flatbuffers`` runtime, so what is written is
exactly the schema, with no TensorFlow. Custom operator options (``TFLite_Detection_PostProcess``) are FlexBuffers,
written with ``flatbuffers.flexbuffers``.

    g = GraphWriter()
    x = g.tensor("input", (1, 128, 128, 3), "uint8", scale=1 / 128, zero_point=128)
    w = g.constant("w", q_weights, scale=0.01, zero_point=120)          # numpy uint8, OHWI
    b = g.constant("b", q_bias, scale=1.28e-4, zero_point=0)              # numpy int32
    y = g.tensor("y", (1, 64, 64, 8), "uint8", scale=0.0235, zero_point=0)
    g.operator("CONV_2D", [x, w, b], [y], padding="SAME", stride=2, activation="RELU6")
    flat = g.finish([x], [y], metadata={"mobilenet": b"{...}"})
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .format import BUILTIN_OPERATORS, FILE_IDENTIFIER, TENSOR_TYPES

PADDINGS = {"SAME": 0, "VALID": 1}
ACTIVATIONS = {"NONE": 0, "RELU": 1, "RELU_N1_TO_1": 2, "RELU6": 3, "TANH": 4}
_TYPE_CODES = {name: i for i, (name, _) in enumerate(TENSOR_TYPES)}


def _schema() -> Any:
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        raise ImportError("writing .tflite files needs the LiteRT package's schema bindings: "
                          "pip install 'mobilenet[tflite]'") from None
    return schema_py_generated


def _options(schema: Any, opcode: str, o: dict[str, Any]) -> tuple[int, Any]:
    """(BuiltinOptions type, options object) of an operator from keyword options."""
    kinds = schema.BuiltinOptions
    if opcode in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        opt = schema.Conv2DOptionsT() if opcode == "CONV_2D" else schema.DepthwiseConv2DOptionsT()
        opt.padding = PADDINGS[o.get("padding", "SAME")]
        opt.strideH = opt.strideW = int(o.get("stride", 1))
        opt.fusedActivationFunction = ACTIVATIONS[o.get("activation", "NONE")]
        opt.dilationHFactor = opt.dilationWFactor = 1
        if opcode == "DEPTHWISE_CONV_2D":
            opt.depthMultiplier = int(o.get("depth_multiplier", 1))
            return kinds.DepthwiseConv2DOptions, opt
        return kinds.Conv2DOptions, opt
    if opcode == "AVERAGE_POOL_2D":
        opt = schema.Pool2DOptionsT()
        opt.padding = PADDINGS[o.get("padding", "VALID")]
        opt.strideH, opt.strideW = o.get("strides", (1, 1))
        opt.filterHeight, opt.filterWidth = o["filter"]
        opt.fusedActivationFunction = ACTIVATIONS[o.get("activation", "NONE")]
        return kinds.Pool2DOptions, opt
    if opcode == "RESHAPE":
        opt = schema.ReshapeOptionsT()
        opt.newShape = [int(v) for v in o["new_shape"]]
        return kinds.ReshapeOptions, opt
    if opcode == "SOFTMAX":
        opt = schema.SoftmaxOptionsT()
        opt.beta = float(o.get("beta", 1.0))
        return kinds.SoftmaxOptions, opt
    if opcode == "CONCATENATION":
        opt = schema.ConcatenationOptionsT()
        opt.axis = int(o["axis"])
        opt.fusedActivationFunction = ACTIVATIONS[o.get("activation", "NONE")]
        return kinds.ConcatenationOptions, opt
    if opcode == "PAD":
        return kinds.PadOptions, schema.PadOptionsT()
    if o:
        raise ValueError(f"options {sorted(o)} given for {opcode}, which this writer writes without options")
    return kinds.NONE, None


def flexbuffer_map(values: dict[str, Any]) -> bytes:
    """A FlexBuffer map (a custom operator's options), as TF Lite's converters write them."""
    from flatbuffers import flexbuffers

    builder = flexbuffers.Builder()
    with builder.Map():
        for key, value in values.items():
            if isinstance(value, bool):
                builder.Bool(key, value)
            elif isinstance(value, int):
                builder.Int(key, value)
            elif isinstance(value, float):
                builder.Float(key, value)
            else:
                raise TypeError(f"custom option {key!r}: {type(value).__name__} is not written")
    return bytes(builder.Finish())


class GraphWriter:
    """One subgraph being written: tensors (activations and constants), operators in execution order."""

    def __init__(self) -> None:
        self.schema = _schema()
        empty = self.schema.BufferT()
        self.buffers: list[Any] = [empty]  # buffer 0 is the empty buffer (activations point at it)
        self.tensors: list[Any] = []
        self.operators: list[Any] = []
        self.opcodes: list[Any] = []
        self._opcode_index: dict[tuple[str, str | None, int], int] = {}

    def tensor(self, name: str, shape: Sequence[int], dtype: str, *, scale: float | Sequence[float] | None = None,
               zero_point: int | Sequence[int] = 0, axis: int = 0, data: np.ndarray | None = None) -> int:
        """Add a tensor (a constant when ``data`` is given); returns its index. ``scale`` quantizes it (one value
        per tensor, or one per slice of ``axis``)."""
        if dtype not in _TYPE_CODES:
            raise ValueError(f"unknown tensor type {dtype!r}")
        t = self.schema.TensorT()
        t.name, t.shape, t.type = name, [int(v) for v in shape], _TYPE_CODES[dtype]
        t.buffer = 0
        if data is not None:
            data = np.ascontiguousarray(data)
            if tuple(data.shape) != tuple(t.shape) or data.dtype.name != dtype:
                raise ValueError(f"{name}: data is {data.dtype.name} {data.shape}, the tensor {dtype} {tuple(shape)}")
            buf = self.schema.BufferT()
            buf.data = np.frombuffer(data.tobytes(), dtype=np.uint8)
            self.buffers.append(buf)
            t.buffer = len(self.buffers) - 1
        if scale is not None:
            q = self.schema.QuantizationParametersT()
            scales = [float(scale)] if np.isscalar(scale) else [float(v) for v in scale]  # type: ignore[union-attr]
            zeros = [int(zero_point)] * len(scales) if np.isscalar(zero_point) else [int(v) for v in zero_point]  # type: ignore[union-attr]
            q.scale, q.zeroPoint, q.quantizedDimension = scales, zeros, int(axis)
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def constant(self, name: str, data: np.ndarray, **quantization: Any) -> int:
        """Add a constant tensor holding ``data`` (its dtype and shape)."""
        return self.tensor(name, data.shape, data.dtype.name, data=data, **quantization)

    def _opcode(self, opcode: str, custom: str | None, version: int) -> int:
        key = (opcode, custom, version)
        if key not in self._opcode_index:
            code = BUILTIN_OPERATORS.index(opcode)
            oc = self.schema.OperatorCodeT()
            oc.builtinCode, oc.deprecatedBuiltinCode = code, min(code, 127)
            oc.customCode, oc.version = custom, version
            self.opcodes.append(oc)
            self._opcode_index[key] = len(self.opcodes) - 1
        return self._opcode_index[key]

    def operator(self, opcode: str, inputs: Sequence[int], outputs: Sequence[int], *, version: int = 1,
                 custom_code: str | None = None, custom_options: bytes | None = None, **options: Any) -> None:
        """Append an operator (``opcode`` from the schema's builtin list, or ``"CUSTOM"`` with ``custom_code``)."""
        op = self.schema.OperatorT()
        op.opcodeIndex = self._opcode(opcode, custom_code, version)
        op.inputs, op.outputs = [int(i) for i in inputs], [int(i) for i in outputs]
        if opcode == "CUSTOM":
            op.customOptions = np.frombuffer(custom_options or b"", dtype=np.uint8)
            op.customOptionsFormat = 0  # FLEXBUFFERS
        else:
            op.builtinOptionsType, op.builtinOptions = _options(self.schema, opcode, options)
        self.operators.append(op)

    def finish(self, inputs: Sequence[int], outputs: Sequence[int], *, metadata: dict[str, bytes] | None = None,
               description: str = "mobilenet", name: str = "main") -> bytes:
        """The ``.tflite`` bytes of the graph (schema version 3) with ``metadata`` entries (name -> bytes)."""
        s = self.schema
        sub = s.SubGraphT()
        sub.tensors, sub.operators, sub.name = self.tensors, self.operators, name
        sub.inputs, sub.outputs = [int(i) for i in inputs], [int(i) for i in outputs]
        model = s.ModelT()
        model.version, model.description = 3, description
        model.operatorCodes, model.subgraphs, model.buffers = self.opcodes, [sub], list(self.buffers)
        model.metadata = []
        for key, data in (metadata or {}).items():
            _add_entry(s, model, key, data)
        return pack(model)


def pack(model: Any) -> bytes:
    """Serialise a schema ``ModelT`` with TF Lite's file identifier."""
    import flatbuffers

    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def _add_entry(schema: Any, model: Any, name: str, data: bytes) -> None:
    """Append a metadata entry ``name`` pointing at a new buffer holding ``data``."""
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(bytes(data), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = name, len(model.buffers) - 1
    model.metadata.append(entry)


def add_metadata(flatbuffer: bytes, name: str, data: bytes) -> bytes:
    """The ``.tflite`` bytes with a metadata entry ``name`` -> ``data`` (replacing one of that name)."""
    s = _schema()
    model = s.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    model.metadata = [m for m in (model.metadata or []) if (m.name or b"") not in (name, name.encode())]
    _add_entry(s, model, name, data)
    return pack(model)
