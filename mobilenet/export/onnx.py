"""ONNX: float (``torch.onnx``'s ``torch.export``-based exporter) and int8 QDQ (ONNX Runtime's static quantization).

The file has the named input ``"input"`` ``(batch, C, H, W)`` (dynamic batch) and output ``"logits"``
``(batch, num_classes)``, and carries the metadata (:mod:`mobilenet.export.metadata`) in its
``metadata_props``: key ``"mobilenet"`` (JSON), plus ``"preprocessing"`` and ``"class_names"`` on their own for
other tools. Detectors go through :func:`mobilenet.detection.export.export_detector_onnx` (with or without NMS).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..checkpoint import atomic_write
from ..deploy.static import static_model
from ..model import MobileNetV1
from .metadata import artifact_metadata, input_size

INPUT_NAME, OUTPUT_NAME = "input", "logits"
DEFAULT_OPSET = 18


def _require_onnx() -> Any:
    try:
        import onnx
        import onnxscript  # noqa: F401  (the torch.export-based exporter needs it)
    except ImportError:
        raise ImportError("ONNX export needs onnx and onnxscript: pip install 'mobilenet[export]'") from None
    return onnx


def export_onnx(
    model: MobileNetV1,
    path: str | os.PathLike[str],
    *,
    resolution: int | None = None,
    opset: int = DEFAULT_OPSET,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as an ONNX file (opset >= 17, dynamic batch).

    ``resolution``: input size (default ``model.config.resolution``). ``metadata``: what goes into
    ``metadata_props`` (default: :func:`~mobilenet.export.metadata.artifact_metadata` of ``model``).
    """
    if not isinstance(model, MobileNetV1):
        raise TypeError(f"export_onnx expects a MobileNetV1, got {type(model).__name__}")
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    onnx = _require_onnx()
    size = input_size(model, resolution)
    meta = artifact_metadata(model, size=size) if metadata is None else metadata
    net = static_model(model, size)
    # batch 2, not 1: tracers may specialise a dimension of size 1 as a constant.
    example = torch.randn(2, model.config.in_chans, *size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)  # the exporter logs a line per torchvision op it cannot find
    try:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tmp_path = Path(tmp) / "model.onnx"
            torch.onnx.export(net, (example,), str(tmp_path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              opset_version=opset, dynamic_shapes={"x": {0: batch}}, dynamo=True,
                              external_data=False, verbose=False, report=False)
            proto = onnx.load(str(tmp_path))
    finally:
        onnx_log.setLevel(level)
    props = {"mobilenet": json.dumps(meta), "preprocessing": json.dumps(meta.get("preprocessing")),
             "class_names": json.dumps(meta.get("class_names"))}
    for k, v in props.items():
        proto.metadata_props.add(key=k, value=v)
    proto.doc_string = f"MobileNet v1 {model.config.width_mult}x, {size[0]}x{size[1]} input; see metadata_props"
    with atomic_write(path) as f:
        f.write(proto.SerializeToString())
    return Path(path)


def export_onnx_int8(
    model: MobileNetV1,
    path: str | os.PathLike[str],
    calibration: torch.Tensor,
    *,
    resolution: int | None = None,
    opset: int = DEFAULT_OPSET,
    use_recorded: bool = True,
    symmetric_weights: bool = False,
    bias_correction: bool = True,
) -> Path:
    """int8 QDQ ONNX: :func:`export_onnx`, then ONNX Runtime static quantization calibrated on ``calibration``.

    With ``use_recorded`` a quantization-aware trained import keeps the grids it was trained on (see
    :func:`mobilenet.deploy.quantize.recorded_grids`) in place of calibrated ones: its activations' grids, and its
    weights' (per tensor, with the file's zero points: exact). Otherwise, or with ``symmetric_weights``, every conv
    kernel gets a per-channel symmetric int8 grid chosen here
    (:func:`~mobilenet.deploy.quantize.symmetric_weight_grids`: a recorded scale where a channel fits it, else
    min/max; what OpenVINO's CPU plugin runs fastest), and with ``bias_correction`` the biases absorb the mean shift
    of that rounding (:func:`~mobilenet.deploy.quantize.bias_corrected`).
    """
    from ..deploy.quantize import bias_corrected, quantize_onnx, recorded_grids, symmetric_weight_grids

    size = input_size(model, resolution if resolution is not None else int(calibration.shape[-1]))
    ranges, grids = recorded_grids(model) if use_recorded else ({}, {})
    net = model
    if symmetric_weights or not grids:
        grids = symmetric_weight_grids(model, every_conv=True, use_recorded=use_recorded)
        net = bias_corrected(model, grids, calibration) if bias_correction else model  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as tmp:
        float_path = export_onnx(net, Path(tmp) / "float.onnx", resolution=size[0], opset=opset,
                                 metadata=artifact_metadata(model, size=size))
        return quantize_onnx(float_path, path, calibration, activation_ranges=ranges, weight_grids=grids)


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


_QUANT_RANGE = {"uint8": (0, 255), "int8": (-128, 127), "int32": (-(2**31), 2**31 - 1)}


class _QDQGraph:
    """A QDQ MobileNet ONNX graph run in PyTorch (see :func:`simulate_qdq`)."""

    def __init__(self, proto: Any) -> None:
        from onnx import numpy_helper

        self.proto = proto
        self.const = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in proto.graph.initializer}
        self.producer = {o: n for n in proto.graph.node for o in n.output}

    def run(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, torch.Tensor] = {**self.const, self.proto.graph.input[0].name: x.float()}
        for node in self.proto.graph.node:
            env[node.output[0]] = self._node(node, env)
        return env[self.proto.graph.output[0].name]

    def _dq_of(self, name: str, op: str = "DequantizeLinear") -> Any:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op else None

    def _node(self, node: Any, env: dict[str, torch.Tensor]) -> torch.Tensor:
        a, ins = _attrs(node), [env[i] if i else None for i in node.input]
        op = node.op_type
        if op == "QuantizeLinear":
            fused = self._fused(node, env)
            if fused is not None:
                return fused
            scale, zp = ins[1].float(), ins[2]
            lo, hi = _QUANT_RANGE[str(zp.dtype).split(".")[-1]]
            return (torch.round(ins[0].float() / scale) + zp.float()).clamp(lo, hi).to(zp.dtype)
        if op == "DequantizeLinear":
            shape = self._axis_shape(ins[0], ins[1], a.get("axis", 1))
            return (ins[0].double() - ins[2].double().view(shape)).float() * ins[1].float().view(shape)
        if op == "Conv":
            return self._conv(ins[0], ins[1], ins[2], a)
        if op in ("Clip", "Relu"):
            lo = ins[1] if len(ins) > 1 and ins[1] is not None else (0.0 if op == "Relu" else -math.inf)
            hi = ins[2] if len(ins) > 2 and ins[2] is not None else math.inf
            return ins[0].clamp(float(lo), float(hi))
        if op in ("ReduceMean", "GlobalAveragePool"):
            dims = [int(d) for d in (ins[1] if len(ins) > 1 else a.get("axes", [2, 3]))]
            return ins[0].mean(dim=dims, keepdim=bool(a.get("keepdims", 1)))
        if op == "Reshape":
            return ins[0].reshape([int(d) for d in ins[1]])
        if op == "Flatten":
            return ins[0].flatten(int(a.get("axis", 1)))
        if op == "Gemm":
            b = ins[1].t() if a.get("transB", 0) else ins[1]
            out = ins[0] @ b * float(a.get("alpha", 1.0))
            return out + float(a.get("beta", 1.0)) * ins[2] if len(ins) > 2 and ins[2] is not None else out
        raise ValueError(f"simulate_qdq: ONNX op {op} ({node.name}) is not one a MobileNet QDQ graph has")

    @staticmethod
    def _axis_shape(x: torch.Tensor, scale: torch.Tensor, axis: int) -> tuple[int, ...]:
        if scale.ndim == 0:
            return ()
        return tuple(-1 if d == axis % x.ndim else 1 for d in range(x.ndim))

    @staticmethod
    def _conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, a: dict[str, Any]) -> torch.Tensor:
        pads = list(a.get("pads", [0] * 4))  # ONNX: top, left, bottom, right
        x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
        return F.conv2d(x, w.to(x.dtype), None if b is None else b.to(x.dtype), list(a.get("strides", [1, 1])), 0,
                        list(a.get("dilations", [1, 1])), int(a.get("group", 1)))

    def _fused(self, q: Any, env: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """DequantizeLinear -> Conv [-> Relu/Clip] -> QuantizeLinear as ONNX Runtime's QLinearConv computes it."""
        source, lo, hi = self.producer.get(q.input[0]), -math.inf, math.inf
        if source is not None and source.op_type in ("Relu", "Clip"):
            lo = 0.0 if source.op_type == "Relu" else float(env[source.input[1]]) if len(source.input) > 1 else lo
            hi = float(env[source.input[2]]) if source.op_type == "Clip" and len(source.input) > 2 else hi
            source = self.producer.get(source.input[0])
        if source is None or source.op_type != "Conv":
            return None
        dx, dw = self._dq_of(source.input[0]), self._dq_of(source.input[1])
        db = self._dq_of(source.input[2]) if len(source.input) > 2 else None
        if dx is None or dw is None or (len(source.input) > 2 and db is None):
            return None
        x, s_in, zp_in = env[dx.input[0]].double(), env[dx.input[1]].float(), env[dx.input[2]].double()
        w = env[dw.input[0]].double() - env[dw.input[2]].double().view(-1, 1, 1, 1)
        acc = self._conv(x - zp_in, w, None, _attrs(source))  # exact: float64 on integers (zero padding is zp)
        if db is not None:
            acc = acc + env[db.input[0]].double().view(1, -1, 1, 1)  # the file's int32 bias
        s_out, zp_out = env[q.input[1]].float(), env[q.input[2]]
        multiplier = (s_in * env[dw.input[1]].float().reshape(-1)) / s_out  # fp32, as QLinearConv's output scales
        qmin, qmax = _QUANT_RANGE[str(zp_out.dtype).split(".")[-1]]
        zp = float(zp_out)
        low = max(qmin, round(lo / float(s_out) + zp)) if math.isfinite(lo) else qmin
        high = min(qmax, round(hi / float(s_out) + zp)) if math.isfinite(hi) else qmax
        value = (acc.float() * multiplier.view(1, -1, 1, 1)).double()
        return (value.clamp(low - zp, high - zp).round() + zp).to(zp_out.dtype)


@torch.no_grad()
def simulate_qdq(path: str | os.PathLike[str], x: torch.Tensor) -> torch.Tensor:
    """Our own simulation of an int8 QDQ ONNX file (:func:`export_onnx_int8`): its graph run in PyTorch, every
    ``DequantizeLinear -> Conv [-> Clip] -> QuantizeLinear`` computed as ONNX Runtime's fused ``QLinearConv``
    computes it (exact int32 accumulator with the file's int32 bias, fp32 multiplier input scale x weight scale /
    output scale, rounded to nearest even, the activation as the output clamp), the other ops in float32 as the graph
    says. ``x``: ``(B, C, H, W)`` normalised images; returns the logits.

    Running the QDQ graph with its convs in float32 (what ONNX Runtime does with graph optimisations off) is not
    enough: values near half a step round the other way now and then, and a quantization-aware model's large
    depthwise kernels amplify each such step (measured: 97 of 100 shared photos' top-1 agreed with the optimised
    runtime on the 0.25-128 import with its grids removed)."""
    import onnx

    return _QDQGraph(onnx.load(str(path))).run(x)


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``"mobilenet"`` metadata (config, class names, preprocessing) of an exported ONNX file."""
    from ..runtimes.onnxruntime import read_metadata

    meta = read_metadata(path)
    if not meta:
        raise ValueError(f"{path} has no 'mobilenet' metadata: it was not exported by mobilenet")
    return meta
