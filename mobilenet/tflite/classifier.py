"""TF Lite MobileNet v1 classifiers (float or uint8-quantized ``.tflite``) -> our weights.

TF Lite folded every BatchNorm into its conv (kernel scaled, bias added) and fused ReLU6 into the op;
quantized files store uint8 kernels with scale/zero point and int32 biases with scale
input_scale * kernel_scale. We dequantize both and give each conv an identity BN whose beta is the
folded bias (see ``imported._unit_state``), so our float model computes conv(x) + bias -> ReLU6.
The input quantization (uint8, scale 1/128, zero point 128) becomes the preprocessing:
x_float = (pixel - 128) / 128.

A quantized (quantization-aware trained) file also tells us the grids the model was trained to run
on; the import records them (:class:`mobilenet.weights.Quantization`) for ``mobilenet quantize`` and
:func:`mobilenet.tflite.fidelity.uint8_activations` to reuse: the exact grid (scale, zero point, clamp of
a fused ReLU6) of the input, of each conv-bn-act unit's output (``stem``, ``blocks.{i}.dw``,
``blocks.{i}.pw``), of the pool and of the logits (:func:`activation_grids`), and the grid of every
kernel by its state-dict name (:func:`weight_grids`, one scale per tensor or per output channel).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..convert.imported import ConvUnit, Imported, depthwise_1hwc_to_oihw, ohwi_to_oihw
from ..model import LAYERS, STEM_STRIDE
from ..preprocessing import Preprocessing
from ..weights import Quantization, WeightGrid
from .format import TFLiteModel, TFLiteOperator, read_tflite
from .grid import ActivationGrid, conv_output_grid, tensor_grid, weight_grid

_CONVS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
# Ops that carry no weights in a classifier graph; anything else is refused (not a plain MobileNet v1).
_PASSIVE = ("PAD", "AVERAGE_POOL_2D", "MEAN", "RESHAPE", "SQUEEZE", "SOFTMAX", "QUANTIZE", "DEQUANTIZE")
UNIT_NAMES = ["stem"] + [f"blocks.{i}.{part}" for i in range(len(LAYERS)) for part in ("dw", "pw")]


def _constant(model: TFLiteModel, index: int, what: str) -> np.ndarray:
    """Float values of a constant input, looking through a DEQUANTIZE op (float16/int8 weight storage)."""
    t = model.stored(index)
    values = t.dequantize()
    if values is None:
        raise ValueError(f"{model.path}: {what} ({t.name!r}) is not a constant tensor")
    return values


def weight_grids(model: TFLiteModel, units: list[TFLiteOperator], head: TFLiteOperator | None
                 ) -> dict[str, WeightGrid]:
    """The grids of a quantized MobileNet v1 file's kernels, keyed by our state-dict names (empty: a float file).

    ``units``: the 27 conv ops in order (stem, then dw/pw per block); ``head``: the classifier op or None.
    """
    ops = [(f"{name}.conv.weight", op) for name, op in zip(UNIT_NAMES, units, strict=True)]
    if head is not None:
        ops.append(("classifier.weight", head))
    return {name: WeightGrid.from_dict(g) for name, op in ops if (g := weight_grid(model, op.inputs[1])) is not None}


def activation_grids(model: TFLiteModel, units: list[TFLiteOperator], head: TFLiteOperator | None
                     ) -> dict[str, ActivationGrid]:
    """The exact uint8 grid (scale, zero point, fused-activation clamp) of each activation the interpreter
    quantizes, keyed as :mod:`mobilenet.tflite.fidelity` reads them: ``input``, the units, ``pool``
    (the average pool's output, our classifier's input) and ``classifier``. Empty for a float file.
    """
    convs = list(zip(UNIT_NAMES, units, strict=True))
    points = [("input", model.tensors[units[0].inputs[0]], None)]
    if head is not None:
        pool = next((op for op in model.operators if op.opcode in ("AVERAGE_POOL_2D", "MEAN")
                     and op.inputs[0] == units[-1].outputs[0]), None)
        if pool is not None:
            points.append(("pool", model.tensors[pool.outputs[0]], pool.options.get("fused_activation_function")))
        convs.append(("classifier", head))
    grids = {name: g for name, t, act in points if (g := tensor_grid(t, act)) is not None}
    grids.update({name: g for name, op in convs if (g := conv_output_grid(model, op)) is not None})
    return grids


def import_tflite(path: str | os.PathLike[str]) -> Imported:
    """Map a MobileNet v1 ``.tflite`` classifier onto our layout (tf preset, folded BN)."""
    model = read_tflite(path)
    src = str(path)
    unknown = [op.custom_code or op.opcode for op in model.operators if op.opcode not in _CONVS + _PASSIVE]
    if unknown:
        raise ValueError(f"{src}: operator {unknown[0]} is not part of a MobileNet v1 classifier "
                         f"(a detector or another architecture?)")
    convs = [op for op in model.operators if op.opcode in _CONVS]
    n_body = 1 + 2 * len(LAYERS)
    if len(convs) not in (n_body, n_body + 1):
        raise ValueError(f"{src}: {len(convs)} conv/fully-connected ops, a MobileNet v1 has {n_body} "
                         f"(+1 classifier)")

    expected = [("CONV_2D", STEM_STRIDE)] + [k for _, s in LAYERS for k in (("DEPTHWISE_CONV_2D", s), ("CONV_2D", 1))]
    units: list[ConvUnit] = []
    for i, (op, (kind, stride)) in enumerate(zip(convs[:n_body], expected, strict=True)):
        where = f"op {op.index} ({op.opcode}, unit {i})"
        if op.opcode != kind:
            raise ValueError(f"{src}: {where}: expected {kind} here in a MobileNet v1")
        if op.options.get("stride_h") != stride or op.options.get("stride_w") != stride:
            raise ValueError(f"{src}: {where}: stride {op.options.get('stride_h')}, MobileNet v1 has {stride}")
        if op.options.get("fused_activation_function") != "RELU6":
            raise ValueError(f"{src}: {where}: activation {op.options.get('fused_activation_function')}, "
                             "expected RELU6 fused into the conv")
        w = _constant(model, op.inputs[1], f"{where} kernel")
        bias = _constant(model, op.inputs[2], f"{where} bias") if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
        weight = depthwise_1hwc_to_oihw(w) if kind == "DEPTHWISE_CONV_2D" else ohwi_to_oihw(w)
        units.append(ConvUnit(name=f"{where} {model.tensors[op.inputs[1]].name.split(';')[0]}", weight=weight,
                              bias=bias))

    cls_w = cls_b = head = None
    if len(convs) > n_body:
        head = convs[-1]
        if head.opcode == "CONV_2D" and head.options.get("fused_activation_function") not in (None, "NONE"):
            raise ValueError(f"{src}: the classifier conv has a fused activation, expected none")
        w = _constant(model, head.inputs[1], "classifier kernel")
        cls_w = w.reshape(w.shape[0], -1)  # (N, 1, 1, C) or (N, C) -> (N, C)
        if len(head.inputs) > 2 and head.inputs[2] >= 0:
            cls_b = _constant(model, head.inputs[2], "classifier bias")

    (inp,) = model.inputs
    if len(inp.shape) != 4 or inp.shape[1] != inp.shape[2] or inp.shape[3] != 3:
        raise ValueError(f"{src}: input shape {inp.shape}, expected (1, R, R, 3)")
    resolution = int(inp.shape[1])
    if inp.dtype == "uint8" and inp.is_quantized:
        # the interpreter sees (pixel - zero_point) * scale: use exactly that
        zp, scale = float(inp.zero_point[0]), float(inp.scale[0])
        pre = Preprocessing(resolution=resolution, crop_mode="crop_resize", mean=(zp,) * 3, std=(1 / scale,) * 3)
    else:
        pre = Preprocessing.tf(resolution)
    quantized = any(model.tensors[op.inputs[1]].is_quantized for op in convs)
    grids = activation_grids(model, convs[:n_body], head)
    kernels = weight_grids(model, convs[:n_body], head)
    return Imported(units=units, classifier_weight=cls_w, classifier_bias=cls_b, preset="tf", format="tflite",
                    source=Path(src).name, resolution=resolution, preprocessing=pre,
                    quantization=Quantization(activations=grids, weights=kernels) if grids or kernels else None,
                    extra={"quantized": quantized, "input_dtype": inp.dtype})
