"""ExecuTorch: a ``.pte`` program lowered to the XNNPACK delegate, float or int8.

fp32: ``torch.export`` of the static graph for a fixed batch size (1 unless asked; a dynamic batch lowered
here accepted at most 15 images per call whatever its declared bound, so the runtime chunks instead), lowered
with ``to_edge_transform_and_lower`` and the XNNPACK partitioner. int8: PT2E quantization with the
``XNNPACKQuantizer`` (per-channel symmetric int8 weights, int8 activations calibrated on images), then the
same lowering, so XNNPACK runs quantized convolutions. A detector is exported as its network with box
decoding (:func:`~mobilenet.export.metadata.detector_network`).

The metadata (:mod:`mobilenet.export.metadata`) is a constant method ``mobilenet_metadata`` returning the
JSON text; :mod:`mobilenet.runtimes.executorch` reads it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import Node

from ..checkpoint import atomic_write
from ..deploy.static import static_model
from ..runtimes.executorch import METADATA_METHOD
from ..runtimes.predictor import require
from ..runtimes.quiet import quiet_stderr
from .metadata import artifact_metadata, detector_network, input_size, is_detector


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # torchao logs a line per optional CUDA kernel it cannot load, torch.export warns about deprecations.
    log = logging.getLogger("torchao")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), quiet_stderr():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _graph(model: nn.Module, size: tuple[int, int], batch: int) -> tuple[nn.Module, torch.Tensor]:
    """(static module, example batch) for a classifier or an SSD."""
    if is_detector(model):
        return detector_network(model, size), torch.randn(batch, 3, *size)
    return static_model(model, size), torch.randn(batch, model.config.in_chans, *size)  # type: ignore[union-attr]


# ATen ops of the captured graph that the annotations below handle themselves.
_CONV_OPS = ("conv2d.default", "convolution.default", "linear.default")
_ACTIVATION_OPS = ("hardtanh.default", "hardtanh_.default", "relu.default", "relu_.default")
_PAD_OPS = ("pad.default", "constant_pad_nd.default")
# Activation observer for tensors without a recorded grid. Measured on the imported 0.25-128 model with its grids
# removed (calibrated on the 50 even shared photos, scored on the 50 odd ones, before bias correction): "minmax"
# 46 % top-1, XNNPACK's default histogram observer 42 % (float 48 %).
OBSERVERS = ("minmax", "histogram")


def _is(node: Node, ops: tuple[str, ...]) -> bool:
    return node.op == "call_function" and any(node.target is _aten(op) for op in ops)


def _aten(op: str) -> Any:
    packet, overload = op.split(".")
    return getattr(getattr(torch.ops.aten, packet), overload)


def _module_path(node: Node) -> str:
    """The innermost module a captured node came from (``blocks.3.pw.conv``; "" for the top level)."""
    stack = node.meta.get("nn_module_stack") or {}
    return str(list(stack.values())[-1][0]) if stack else ""


@functools.cache
def _grid_weight_observer() -> type:
    from torchao.quantization.pt2e import PerChannelMinMaxObserver

    from ..deploy.quantize import symmetric_scales

    class GridWeightObserver(PerChannelMinMaxObserver):
        """Per-channel symmetric int8 weights (XNNPACK takes no other) on the recorded grid where a channel fits it
        (:func:`~mobilenet.deploy.quantize.symmetric_scales`), from the kernel PT2E folded its BatchNorm into."""

        def __init__(self, *, grid_scale: float | list[float] | None = None, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.grid_scale = grid_scale
            self.weight: torch.Tensor | None = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.weight = x.detach()
            return super().forward(x)

        def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
            scale, zero_point = super().calculate_qparams()
            if self.weight is None:
                return scale, zero_point
            return symmetric_scales(self.weight, self.grid_scale, min_scale=self.eps.item()).to(scale.dtype), zero_point

    return GridWeightObserver


class MobileNetQuantizer:
    """PT2E annotations of a MobileNet graph (a classifier, or an SSD's network) for XNNPACK, then XNNPACK's own
    quantizer for the rest (pooling, reshapes, concatenations). It is the XNNPACK quantizer for ``prepare_pt2e``
    (every method but ``annotate`` is that quantizer's), so torchao is imported only when one is made.

    Why not ``XNNPACKQuantizer`` alone: it fuses conv + ReLU but not conv + ReLU6 (``hardtanh``), so it quantizes
    each conv's output over its whole pre-activation range (e.g. [-25, 12]) and then clamps it, leaving [0, 6] a
    few dozen of the 256 levels; it gives the frozen SAME pads an observer of their own (a second rounding of every
    padded tensor); and it quantizes the SSD's box decoding. Here:

    * conv (or linear) -> ReLU6/ReLU is one unit: int8 input, per-channel symmetric int8 weights, the output observed
      after the activation (XNNPACK fuses the clamp into the conv, as TF Lite does);
    * a pad keeps the grid of what it pads (its zero is on that grid), so it is exact;
    * ``grids`` (:func:`~mobilenet.deploy.quantize.int8_activation_grids`, by our module names: ``input``, ``stem``,
      ``blocks.3.pw``, ``classifier``) are fixed where a tensor has one, and the weights of ``weight_grids``
      (state-dict name -> recorded grid) keep their recorded scale where a channel fits; every other tensor is
      calibrated with ``observer``;
    * ``scope``: module-path prefix of the network (an SSD's ``model.``): nodes outside it (the box decoding) stay
      float.
    """

    def __init__(self, *, grids: dict[str, tuple[float, int]] | None = None,
                 weight_grids: dict[str, dict[str, Any]] | None = None, observer: str = "minmax",
                 scope: str = "") -> None:
        if observer not in OBSERVERS:
            raise ValueError(f"observer must be one of {', '.join(OBSERVERS)}, got {observer!r}")
        xnnpack = require("executorch.backends.xnnpack.quantizer.xnnpack_quantizer", "executorch export",
                          "executorch")
        from torchao.quantization.pt2e import HistogramObserver, MinMaxObserver

        self.grids, self.weight_grids, self.scope = dict(grids or {}), dict(weight_grids or {}), scope
        self._xnnpack = xnnpack.XNNPACKQuantizer().set_global(
            xnnpack.get_symmetric_quantization_config(is_per_channel=True))
        # Convs are annotated here; XNNPACK's conv patterns (conv-bn among them, each traced with torch.export:
        # 8 s of a 14 s quantization on the 0.25-128 model) would find nothing left to annotate.
        self._xnnpack.SUPPORTED_PATTERNS = [p for p in self._xnnpack.SUPPORTED_PATTERNS
                                            if not p.name.startswith("conv")]
        if scope:
            self._xnnpack.set_filter_function(self._in_scope)
        spec = self._specs()
        act = HistogramObserver if observer == "histogram" else MinMaxObserver
        self._act = spec.QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127,
                                          qscheme=torch.per_tensor_affine,
                                          observer_or_fake_quant_ctr=act.with_args(eps=2**-12))

    @staticmethod
    def _specs() -> Any:
        import torchao.quantization.pt2e.quantizer as spec

        return spec

    def _in_scope(self, node: Node) -> bool:
        return _module_path(node).startswith(self.scope)

    def _name(self, node: Node) -> str:
        """Our module name of a unit's node: ``blocks.3.pw`` for ``[scope]blocks.3.pw.conv`` or ``.act``."""
        path = _module_path(node)[len(self.scope):]
        for suffix in (".conv", ".act"):
            if path.endswith(suffix):
                return path[: -len(suffix)]
        return path

    def _output(self, name: str) -> Any:
        spec = self._specs()
        if name in self.grids:
            scale, zero_point = self.grids[name]
            return spec.FixedQParamsQuantizationSpec(dtype=torch.int8, scale=scale, zero_point=zero_point,
                                                     quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine)
        return self._act

    def _input(self, arg: Node) -> Any:
        # What a unit or pad reads keeps its producer's grid; the graph input has its own.
        from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

        annotation = arg.meta.get(Q_ANNOTATION_KEY)
        if annotation is not None and annotation.output_qspec is not None:
            return self._specs().SharedQuantizationSpec(arg)
        return self._output("input") if arg.op == "placeholder" else self._act

    def _weight(self, conv: Node) -> Any:
        grid = self.weight_grids.get(_module_path(conv)[len(self.scope):] + ".weight")
        observer = _grid_weight_observer().with_args(eps=2**-12, grid_scale=grid["scale"] if grid else None)
        return self._specs().QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127, ch_axis=0,
                                              qscheme=torch.per_channel_symmetric,
                                              observer_or_fake_quant_ctr=observer)

    def __getattr__(self, name: str) -> Any:  # transform_for_annotation, validate, ...: XNNPACK's
        if name.startswith("__") or name == "_xnnpack":
            raise AttributeError(name)
        return getattr(self._xnnpack, name)

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        from torchao.quantization.pt2e.quantizer import QuantizationAnnotation
        from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

        spec = self._specs()
        for node in model.graph.nodes:  # in graph order: every producer is annotated before its users
            if not self._in_scope(node) or not node.args or not isinstance(node.args[0], Node):
                continue
            arg = node.args[0]
            if _is(node, _PAD_OPS):
                node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
                    input_qspec_map={arg: self._input(arg)}, output_qspec=spec.SharedQuantizationSpec((arg, node)),
                    _annotated=True)
            elif _is(node, _CONV_OPS):
                users = list(node.users)
                act = users[0] if len(users) == 1 and _is(users[0], _ACTIVATION_OPS) else None
                output = self._output(self._name(node))
                node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
                    input_qspec_map={arg: self._input(arg), node.args[1]: self._weight(node)},
                    output_qspec=None if act is not None else output, _annotated=True)
                if act is not None:
                    act.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(output_qspec=output, _annotated=True)
        return self._xnnpack.annotate(model)


def _attr(module: nn.Module, target: str) -> Any:
    return functools.reduce(getattr, target.split("."), module)


def correct_biases(prepared: torch.fx.GraphModule, calibration: torch.Tensor, *, batch_size: int = 16) -> int:
    """Bias correction of a calibrated PT2E graph (Nagel et al. 2019, "Data-Free Quantization Through Weight
    Equalization and Bias Correction"; what NNCF's fast bias correction does for OpenVINO), in place: each conv or
    linear's bias absorbs the mean shift its weight rounding gives its output, ``E[conv(x, w_q - w)]`` per output
    channel with ``E[x]`` the per-channel mean of its input on ``calibration`` (borders not told apart). A channel
    quantized losslessly (on its recorded grid) is left as it is. Returns the number of biases changed.

    Measured on the imported 0.25-128 model with its grids removed (calibrated on the 50 even shared photos):
    top-1 agreement of the int8 program with float 82 % -> 95 % on all 100 photos (top-1 41 % -> 46 %; float 44 %).
    """
    from ..deploy.quantize import rounding_shift

    layers = [n for n in prepared.graph.nodes if _is(n, _CONV_OPS) and len(n.args) > 2 and isinstance(n.args[2], Node)
              and isinstance(n.args[1], Node) and n.args[1].op == "call_module"]
    inputs = {n.args[0] for n in layers}
    sums: dict[Node, torch.Tensor] = {}

    class _Means(torch.fx.Interpreter):
        def run_node(self, n: Node) -> Any:
            out = super().run_node(n)
            if n in inputs:  # per-channel sums over batch and space (B, C[, H, W])
                v = out.detach().double()
                total = v.sum(dim=[d for d in range(v.ndim) if d != 1]) / (v.numel() / v.shape[1])
                sums[n] = sums.get(n, 0) + total * len(v)
            return out

    with torch.no_grad():
        for batch in calibration.split(batch_size):
            _Means(prepared).run(batch)
    changed = 0
    for layer in layers:
        observer = prepared.get_submodule(str(layer.args[1].target))  # type: ignore[union-attr]
        w = _attr(prepared, str(layer.args[1].args[0].target)).detach().double()  # type: ignore[union-attr]
        scale, _ = observer.calculate_qparams()
        scale = scale.double().view((-1,) + (1,) * (w.ndim - 1))
        error = (w / scale).round().clamp(observer.quant_min, observer.quant_max) * scale - w  # (O, I/g[, kh, kw])
        mean = sums[layer.args[0]] / len(calibration)  # type: ignore[index]
        groups = int(layer.args[6]) if _is(layer, ("conv2d.default",)) and len(layer.args) > 6 else 1  # type: ignore
        shift = rounding_shift(error, mean, groups)
        if shift.abs().max() > 0:
            bias = _attr(prepared, str(layer.args[2].target))  # type: ignore[union-attr]
            bias.data -= shift.to(bias.dtype)
            changed += 1
    return changed


def quantize_pt2e(net: nn.Module, calibration: torch.Tensor, *, batch_size: int = 16,
                  quantizer: MobileNetQuantizer | None = None, bias_correction: bool = True) -> nn.Module:
    """The PT2E int8 graph of ``net`` (:class:`MobileNetQuantizer`, default: no recorded grids), calibrated on
    ``calibration`` ``(N, C, H, W)`` in batches (captured with a dynamic batch for that; the result is exported
    again at the program's fixed batch), with :func:`correct_biases`. :func:`simulate_xnnpack` runs it as the
    program computes."""
    require("executorch.backends.xnnpack.quantizer.xnnpack_quantizer", "executorch export", "executorch")
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = quantizer or MobileNetQuantizer()
    example = calibration[:2] if len(calibration) > 1 else calibration.repeat(2, 1, 1, 1)
    dim = ({0: torch.export.Dim("batch", min=1, max=max(batch_size, 2))},)  # the first argument's batch
    prepared = prepare_pt2e(torch.export.export(net, (example,), dynamic_shapes=dim).module(), quantizer)
    with torch.no_grad():
        for batch in calibration.split(batch_size):
            prepared(batch)
    if bias_correction:
        correct_biases(prepared, calibration, batch_size=batch_size)
    return convert_pt2e(prepared)


def pt2e_model(model: nn.Module, calibration: torch.Tensor, *, use_recorded: bool = True,
               observer: str = "minmax") -> nn.Module:
    """The PT2E int8 module of a classifier or an SSD (its network with box decoding) that
    :func:`export_executorch` lowers, at the size of ``calibration`` ``(N, C, H, W)``: the recorded grids of a
    quantization-aware trained import kept (``use_recorded``), the rest calibrated (:class:`MobileNetQuantizer`).
    Takes batches of up to 16 images."""
    from ..deploy.quantize import int8_activation_grids, recorded_grids

    grids, weight_grids = (int8_activation_grids(model), recorded_grids(model)[1]) if use_recorded else ({}, {})
    net, _ = _graph(model, tuple(calibration.shape[-2:]), 2)  # type: ignore[arg-type]
    quantizer = MobileNetQuantizer(grids=grids, weight_grids=weight_grids, observer=observer,
                                   scope="model." if is_detector(model) else "")
    with _quiet():
        return quantize_pt2e(net, calibration, quantizer=quantizer)


_QUANTIZE = "quantize_per_tensor.default"
_DEQUANTIZE = "dequantize_per_tensor.default"
_POOL_OPS = ("adaptive_avg_pool2d.default", "mean.dim")


def _decomposed(node: Any, op: str) -> bool:
    packet, overload = op.split(".")
    return isinstance(node, Node) and node.op == "call_function" and \
        node.target is getattr(getattr(torch.ops.quantized_decomposed, packet), overload)


def _f32(v: Any) -> torch.Tensor:
    return torch.as_tensor(v, dtype=torch.float64).float()


class _XnnpackArithmetic(torch.fx.Interpreter):
    """Runs a converted PT2E graph with its quantized convs, linears and average pools computed as XNNPACK's int8
    kernels compute them (see :func:`simulate_xnnpack`); every other node as PyTorch runs it."""

    def run_node(self, n: Node) -> Any:
        if _decomposed(n, _QUANTIZE):
            source, bounds = n.args[0], (-math.inf, math.inf)
            if _is(source, _ACTIVATION_OPS):  # fused into the conv's output clamp by XNNPACK
                lo, hi = (source.args[1:3] if len(source.args) > 2 else (-1.0, 1.0)) \
                    if "hardtanh" in str(source.target) else (0.0, math.inf)
                source, bounds = source.args[0], (float(lo), float(hi))
            if _is(source, _CONV_OPS) and _decomposed(source.args[0], _DEQUANTIZE) \
                    and isinstance(source.args[1], Node) and "dequantize_per_channel" in str(source.args[1].target):
                return self._conv(source, n, bounds)
            if _is(source, _POOL_OPS) and _decomposed(source.args[0], _DEQUANTIZE):
                return self._pool(source, n)
        return super().run_node(n)

    def _int(self, dq: Node) -> tuple[torch.Tensor, float, int]:
        """(integer values as float64, scale, zero point) of what a dequantize node reads."""
        return self.env[dq.args[0]].double(), float(dq.args[1]), int(dq.args[2])  # type: ignore[index, arg-type]

    def _out(self, q: Node, value: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
        """XNNPACK's fp32 requantization: ``value`` (fp32 accumulator times multiplier) clamped, rounded to nearest
        even, plus the zero point; a fused activation clamps at its bounds quantized on the output grid."""
        s_out, zp, qmin, qmax = float(q.args[1]), int(q.args[2]), int(q.args[3]), int(q.args[4])  # type: ignore[arg-type]
        lo = max(qmin, round(bounds[0] / s_out + zp)) if math.isfinite(bounds[0]) else qmin
        hi = min(qmax, round(bounds[1] / s_out + zp)) if math.isfinite(bounds[1]) else qmax
        return (value.clamp(lo - zp, hi - zp).round() + zp).to(q.args[5])  # type: ignore[arg-type]

    def _conv(self, conv: Node, q: Node, bounds: tuple[float, float]) -> torch.Tensor:
        x, s_in, zp_in = self._int(conv.args[0])  # type: ignore[arg-type]
        dqw = conv.args[1]
        w = self.env[dqw.args[0]].double()  # type: ignore[union-attr, index]
        s_w = _f32(self.env[dqw.args[1]]).reshape(-1)  # type: ignore[union-attr, index]
        bias = self.env[conv.args[2]] if len(conv.args) > 2 and conv.args[2] is not None else None  # type: ignore
        if _is(conv, ("linear.default",)):
            acc = F.linear(x - zp_in, w)
        else:
            stride, padding, dilation, groups = (list(conv.args[3:]) + [1, 0, 1, 1][len(conv.args) - 3:])[:4]
            acc = F.conv2d(x - zp_in, w, None, stride, padding, dilation, groups)  # exact: float64 on integers
        shape = (1, -1) + (1,) * (acc.ndim - 2)
        bias_scale = s_w * _f32(s_in)  # ExecuTorch writes the bias as int32 on input scale x weight scale
        if bias is not None:
            acc = acc + torch.round(bias.float() * (1.0 / bias_scale)).double().view(shape)
        multiplier = bias_scale / _f32(float(q.args[1]))  # fp32 (input scale * kernel scale) / output scale
        value = (acc.float() * multiplier.view(shape)).double()
        return self._out(q, value, bounds)

    def _pool(self, pool: Node, q: Node) -> torch.Tensor:
        x, s_in, zp_in = self._int(pool.args[0])  # type: ignore[arg-type]
        count = x.shape[-2] * x.shape[-1]
        acc = (x - zp_in).sum(dim=(-2, -1), keepdim=True)  # int32 sum, exact
        multiplier = _f32(s_in) / _f32(float(q.args[1])) / _f32(count)
        return self._out(q, (acc.float() * multiplier).double(), (-math.inf, math.inf))


@torch.no_grad()
def simulate_xnnpack(converted: nn.Module, x: torch.Tensor) -> Any:
    """Our own simulation of an int8 ``.pte``: the converted PT2E module (:func:`pt2e_model`, what
    :func:`export_executorch` lowers) run in PyTorch, with each quantized conv, linear and global average pool
    computed as XNNPACK's int8 kernels do (exact int32 accumulators, int32 biases rounded on input x weight scale as
    ExecuTorch writes them, fp32 requantization rounded to nearest even, a fused ReLU6 as the output clamp).

    Why not the converted module as it is: it runs each conv in float32 on dequantized values and rounds that, so
    values that fall near half a step round the other way now and then (about 1 in 10^4 per layer), and the
    depthwise kernels of a quantization-aware trained model (up to 200 steps of a coarse scale) amplify each such
    step into tens. Measured on Google's 0.25-128 file (recorded grids, and with its grids removed), 100 shared
    photos: the plain module's top-1 agreed with the ``.pte`` on 95 and 97 of them, this simulation's logits equal
    the program's bit for bit on all.
    """
    return _XnnpackArithmetic(converted, garbage_collect_values=False).run(x)  # its look-backs need every value


def export_executorch(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    resolution: int | None = None,
    calibration: torch.Tensor | None = None,
    batch: int = 1,
    use_recorded: bool = True,
    converted: nn.Module | None = None,
) -> Path:
    """Write ``model`` as an XNNPACK ``.pte``: float, or int8 when ``calibration`` images ``(N, C, H, W)`` are given
    (:func:`pt2e_model`: a quantization-aware trained import keeps its recorded grids with ``use_recorded``).

    ``batch``: the program's fixed batch size; the runtime runs other batch sizes in chunks of it. ``converted``:
    the module ``pt2e_model(model, calibration, use_recorded=use_recorded)`` returned, made already (to simulate it
    with :func:`simulate_xnnpack`): lowered as it is instead of quantizing again.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    exir = require("executorch.exir", "executorch export", "executorch")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    size = input_size(model, resolution)
    net, example = _graph(model, size, batch)
    quantization = None
    with _quiet():
        if calibration is not None:
            if tuple(calibration.shape[-2:]) != size:
                raise ValueError(f"calibration images are {tuple(calibration.shape[-2:])}, the export is for {size}")
            from ..deploy.quantize import int8_activation_grids

            net = converted if converted is not None else pt2e_model(model, calibration, use_recorded=use_recorded)
            recorded = use_recorded and bool(int8_activation_grids(model))
            quantization = {"dtype": "int8", "method": "pt2e-xnnpack", "weights": "per-channel symmetric int8",
                            "grids": "recorded" if recorded else "calibrated", "calibration_images": len(calibration)}
        meta = artifact_metadata(model, size=size,
                                 outputs=["decoded", "logits"] if is_detector(model) else ["logits"],
                                 **({"quantization": quantization} if quantization else {}))
        program = exir.to_edge_transform_and_lower(
            torch.export.export(net, (example,)), partitioner=[XnnpackPartitioner()],
            constant_methods={METADATA_METHOD: json.dumps(meta)}).to_executorch()
    with atomic_write(path) as f:
        f.write(program.buffer)
    return Path(path)
