"""Caffe MobileNet v1 (shicai/MobileNet-Caffe ``mobilenet.caffemodel`` + optional deploy prototxt) -> ours.

The ``.caffemodel`` is a NetParameter protobuf; we read it with ``protobuf_wire`` (no Caffe, no
generated code). Field numbers from caffe.proto: NetParameter.layer = 100 (LayerParameter: name 1,
type 2, blobs 7, convolution_param 106, batch_norm_param 139) and the legacy NetParameter.layers = 2
(V1LayerParameter: name 4, type 5, blobs 6, convolution_param 10); BlobProto: data 5 (packed float),
shape 7 (BlobShape.dim 1), legacy num/channels/height/width 1..4.

Each conv (kernels already OIHW) is followed by ``BatchNorm`` (blobs: mean * f, var * f, f, where f
is the moving-average factor) and ``Scale`` (gamma, beta). Caffe's MobileNet uses ReLU, symmetric
padding and BN eps 1e-5, i.e. our "paper" preset, and its 1x1-conv classifier ``fc7`` becomes our
Linear head. Input: BGR, mean (103.94, 116.78, 123.68), scale 0.017.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..model import LAYERS, STEM_STRIDE
from ..preprocessing import Preprocessing
from .imported import ConvUnit, Imported
from .protobuf_wire import LENGTH, ProtobufError, iter_fields, packed_floats, packed_varints, to_signed64

CAFFE_BN_EPS = 1e-5
_CONV_TYPES = ("Convolution", "DepthwiseConvolution", "ConvolutionDepthwise")
_V1_TYPES = {4: "Convolution", 35: "ReLU", 17: "Pooling", 20: "Softmax", 14: "InnerProduct"}  # V1 enum subset


@dataclass
class CaffeLayer:
    name: str
    type: str
    blobs: list[np.ndarray] = field(default_factory=list)
    stride: int = 1
    group: int = 1
    eps: float = CAFFE_BN_EPS
    has_conv_param: bool = False


def _blob(buf: memoryview) -> np.ndarray:
    data: list[np.ndarray] = []
    shape: list[int] = []
    legacy = {1: 1, 2: 1, 3: 1, 4: 1}
    for f, wire, v in iter_fields(buf):
        if f == 5:
            data.append(packed_floats(v, wire))
        elif f == 7 and wire == LENGTH:
            for f2, _, d in iter_fields(v):  # type: ignore[arg-type]
                if f2 == 1:
                    shape += [to_signed64(x) for x in packed_varints(d)]
        elif f in legacy:
            legacy[f] = int(v)  # type: ignore[arg-type]
    arr = np.concatenate(data) if data else np.zeros(0, np.float32)
    if not shape:
        shape = [legacy[1], legacy[2], legacy[3], legacy[4]]
    if int(np.prod(shape)) != arr.size:
        raise ProtobufError(f"blob with shape {shape} holds {arr.size} values")
    return arr.reshape(shape)


def _conv_param(buf: memoryview, layer: CaffeLayer) -> None:
    layer.has_conv_param = True
    for f, _, v in iter_fields(buf):
        if f == 6:  # stride (repeated)
            layer.stride = packed_varints(v)[0]
        elif f == 13:  # stride_h
            layer.stride = int(v)  # type: ignore[arg-type]
        elif f == 5:
            layer.group = int(v)  # type: ignore[arg-type]


def _bn_param(buf: memoryview, layer: CaffeLayer) -> None:
    for f, wire, v in iter_fields(buf):
        if f == 3:
            layer.eps = float(packed_floats(v, wire)[0])


def read_caffemodel(path: str | os.PathLike[str]) -> list[CaffeLayer]:
    """Layers of a ``.caffemodel`` in file order, with their blobs and the conv/BN params we need."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Caffe model not found: {path}")
    layers = []
    try:
        for f, wire, v in iter_fields(path.read_bytes()):
            if wire != LENGTH or f not in (2, 100):
                continue
            v1 = f == 2
            names = {"name": 4, "type": 5, "blobs": 6, "conv": 10} if v1 else \
                {"name": 1, "type": 2, "blobs": 7, "conv": 106, "bn": 139}
            layer = CaffeLayer(name="", type="")
            for f2, w2, v2 in iter_fields(v):  # type: ignore[arg-type]
                if f2 == names["name"]:
                    layer.name = bytes(v2).decode("utf-8")  # type: ignore[arg-type]
                elif f2 == names["type"]:
                    layer.type = _V1_TYPES.get(int(v2), str(v2)) if v1 else bytes(v2).decode("utf-8")  # type: ignore
                elif f2 == names["blobs"]:
                    layer.blobs.append(_blob(v2))  # type: ignore[arg-type]
                elif f2 == names["conv"] and w2 == LENGTH:
                    _conv_param(v2, layer)  # type: ignore[arg-type]
                elif f2 == names.get("bn") and w2 == LENGTH:
                    _bn_param(v2, layer)  # type: ignore[arg-type]
            layers.append(layer)
    except (ProtobufError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path} is not a readable .caffemodel ({e})") from None
    if not layers:
        raise ValueError(f"{path} holds no layers: not a .caffemodel")
    return layers


def parse_prototxt(text: str) -> list[dict[str, Any]]:
    """The ``layer { ... }`` blocks of a prototxt as flat dicts (nested keys joined with '.')."""
    tokens = re.findall(r'"[^"]*"|[{}]|[^\s{}:]+(?=\s*[:{])|[^\s{}:]+', re.sub(r"#.*", "", text))
    layers: list[dict[str, Any]] = []
    stack: list[str] = []
    current: dict[str, Any] | None = None
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "}":
            stack.pop()
            if not stack and current is not None:
                layers.append(current)
                current = None
            i += 1
        elif i + 1 < len(tokens) and tokens[i + 1] == "{":
            if not stack and tok in ("layer", "layers"):
                current = {}
            stack.append(tok)
            i += 2
        else:
            if i + 1 >= len(tokens):
                raise ValueError(f"prototxt ends after key {tok!r}")
            value = tokens[i + 1].strip('"')
            if current is not None:
                key = ".".join([*stack[1:], tok])
                current.setdefault(key, value)
            i += 2
    if stack:
        raise ValueError("prototxt has an unclosed '{'")
    return layers


def import_caffe(path: str | os.PathLike[str], *, prototxt: str | os.PathLike[str] | None = None,
                 resolution: int | None = None) -> Imported:
    """Map a Caffe MobileNet v1 onto our paper preset (see the module docstring)."""
    src = Path(path).name
    layers = [layer for layer in read_caffemodel(path) if layer.blobs]
    eps_override: dict[str, float] = {}
    if prototxt is not None:
        proto = parse_prototxt(Path(prototxt).read_text(encoding="utf-8"))
        proto_convs = [p["name"] for p in proto if p.get("type") in _CONV_TYPES]
        model_convs = [layer.name for layer in layers if layer.type in _CONV_TYPES]
        if proto_convs != model_convs:
            k = next((i for i, (a, b) in enumerate(zip(proto_convs, model_convs, strict=False)) if a != b),
                     min(len(proto_convs), len(model_convs)))
            raise ValueError(f"{prototxt} and {src} disagree at convolution #{k}: "
                             f"{proto_convs[k] if k < len(proto_convs) else None!r} vs "
                             f"{model_convs[k] if k < len(model_convs) else None!r}")
        eps_override = {p["name"]: float(p["batch_norm_param.eps"]) for p in proto if "batch_norm_param.eps" in p}

    convs: list[tuple[CaffeLayer, CaffeLayer | None, CaffeLayer | None]] = []
    for layer in layers:
        if layer.type in _CONV_TYPES or layer.type == "InnerProduct":
            convs.append((layer, None, None))
        elif layer.type == "BatchNorm" and convs:
            convs[-1] = (convs[-1][0], layer, convs[-1][2])
        elif layer.type == "Scale" and convs:
            convs[-1] = (convs[-1][0], convs[-1][1], layer)
        else:
            raise ValueError(f"{src}: layer {layer.name!r} of type {layer.type!r} has weights but is not part of "
                             "a MobileNet v1")
    n_body = 1 + 2 * len(LAYERS)
    if len(convs) not in (n_body, n_body + 1):
        raise ValueError(f"{src}: {len(convs)} convolutions, a MobileNet v1 has {n_body} (+1 classifier)")
    strides = [STEM_STRIDE] + [s for _, st in LAYERS for s in (st, 1)]
    units = []
    for (conv, bn, scale), stride in zip(convs[:n_body], strides, strict=True):
        if conv.has_conv_param and conv.stride != stride:
            raise ValueError(f"{src}: {conv.name} has stride {conv.stride}, MobileNet v1 has {stride} there")
        if bn is None:
            raise ValueError(f"{src}: convolution {conv.name!r} has no BatchNorm after it")
        w = conv.blobs[0].astype(np.float32)
        if len(bn.blobs) < 3:
            raise ValueError(f"{src}: BatchNorm {bn.name!r} has {len(bn.blobs)} blobs, expected 3")
        factor = float(bn.blobs[2].reshape(-1)[0])
        inv = 0.0 if factor == 0 else 1.0 / factor
        mean, var = bn.blobs[0].reshape(-1) * inv, bn.blobs[1].reshape(-1) * inv
        if len(conv.blobs) > 1:  # a conv bias shifts what BN subtracts: BN(x + b) uses mean - b
            mean = mean - conv.blobs[1].reshape(-1)
        c = w.shape[0]
        gamma = scale.blobs[0].reshape(-1) if scale is not None else np.ones(c, np.float32)
        beta = scale.blobs[1].reshape(-1) if scale is not None and len(scale.blobs) > 1 else np.zeros(c, np.float32)
        eps = eps_override.get(bn.name, bn.eps)
        units.append(ConvUnit(conv.name, w, (gamma, beta, mean, var), eps))
    cls_w = cls_b = None
    if len(convs) > n_body:
        head = convs[-1][0]
        cls_w = head.blobs[0].reshape(head.blobs[0].shape[0], -1)
        cls_b = head.blobs[1].reshape(-1) if len(head.blobs) > 1 else None
    res = resolution or 224
    return Imported(units=units, classifier_weight=cls_w, classifier_bias=cls_b, preset="paper", format="caffe",
                    source=src, resolution=res, preprocessing=Preprocessing.caffe(res))
