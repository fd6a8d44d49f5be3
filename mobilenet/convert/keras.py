"""Keras Applications MobileNet weights -> ours: Keras 2 HDF5 (``mobilenet_2_5_224_tf[_no_top].h5``) and
Keras 3 (``.weights.h5`` or the ``model.weights.h5`` inside a ``.keras`` zip).

Keras 2 files name layers (``conv1``, ``conv1_bn``, ``conv_dw_i``, ``conv_dw_i_bn``, ``conv_pw_i``,
``conv_pw_i_bn``, ``conv_preds``). Keras 3 files key variables by layer class and creation order instead
(``layers/conv2d_3/vars/0``, ``layers/depthwise_conv2d/vars/0``, ``layers/batch_normalization_7/vars/0..3``),
so we map them by order: conv2d[_k] = stem, pw_1 .. pw_13, (conv_preds); depthwise_conv2d[_k] = dw_1 .. dw_13;
batch_normalization[_k] = the 27 BNs in execution order. Keras' MobileNet is exactly our tf preset:
ReLU6, BN eps 1e-3, ZeroPadding2D((0, 1), (0, 1)) before each stride-2 conv, a 1x1 conv classifier.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..model import LAYERS
from ..preprocessing import Preprocessing
from .imported import ConvUnit, Imported, depthwise_hwcm_to_oihw, hwio_to_oihw

KERAS_BN_EPS = 1e-3
# Keras 2 file names: mobilenet_{alpha as 1_0|7_5|5_0|2_5}_{rows}_tf[_no_top].h5
_KERAS2_NAME = re.compile(r"mobilenet_(\d)_(\d)_(\d+)_tf(_no_top)?(\.weights)?\.h5$")


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise ImportError("reading Keras .h5 files needs h5py: pip install h5py (or mobilenet[import])") from None
    return h5py


def name_hints(path: str | os.PathLike[str]) -> tuple[float | None, int | None]:
    """(alpha, resolution) from a Keras Applications file name, (None, None) when it does not say."""
    m = _KERAS2_NAME.search(Path(path).name)
    if not m:
        return None, None
    whole, tenths = m.group(1), m.group(2)  # "1_0" -> 1.0, "7_5" -> 0.75, "2_5" -> 0.25
    alpha = float(f"{whole}.{tenths}") if whole == "1" else float(f"0.{whole}{tenths}")
    return alpha, int(m.group(3))


def _keras2_units(root: Any, src: str) -> tuple[list[ConvUnit], np.ndarray | None, np.ndarray | None]:
    def weights(layer: str) -> list[np.ndarray]:
        if layer not in root:
            raise ValueError(f"{src}: missing layer {layer!r} "
                             "(a Keras MobileNet v1 has conv1, conv_dw_1 .. conv_pw_13)")
        g = root[layer]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in g.attrs.get("weight_names", [])]
        return [np.asarray(g[n]) for n in names]

    def bn(layer: str) -> tuple[np.ndarray, ...]:
        w = weights(layer)
        if len(w) != 4:
            raise ValueError(f"{src}: {layer!r} has {len(w)} weights, expected gamma, beta, mean, variance")
        return tuple(w)

    def single(layer: str) -> np.ndarray:
        w = weights(layer)
        if len(w) != 1:
            raise ValueError(f"{src}: {layer!r} has {len(w)} weights, expected one kernel (no bias)")
        return w[0]

    units = [ConvUnit("conv1", hwio_to_oihw(single("conv1")), bn("conv1_bn"), KERAS_BN_EPS)]
    for i in range(1, len(LAYERS) + 1):
        units.append(ConvUnit(f"conv_dw_{i}", depthwise_hwcm_to_oihw(single(f"conv_dw_{i}")),
                              bn(f"conv_dw_{i}_bn"), KERAS_BN_EPS))
        units.append(ConvUnit(f"conv_pw_{i}", hwio_to_oihw(single(f"conv_pw_{i}")), bn(f"conv_pw_{i}_bn"),
                              KERAS_BN_EPS))
    cls_w = cls_b = None
    if "conv_preds" in root and len(root["conv_preds"].attrs.get("weight_names", [])):
        w = weights("conv_preds")
        cls_w = w[0].reshape(-1, w[0].shape[-1]).T  # (1, 1, C, N) -> (N, C)
        cls_b = w[1] if len(w) > 1 else None
    return units, cls_w, cls_b


def _keras3_units(layers: Any, src: str) -> tuple[list[ConvUnit], np.ndarray | None, np.ndarray | None]:
    def ordered(kind: str) -> list[list[np.ndarray]]:
        keys = [k for k in layers if k == kind or re.fullmatch(rf"{kind}_\d+", k)]
        keys.sort(key=lambda k: int(k.rsplit("_", 1)[1]) if k != kind else 0)
        out = []
        for k in keys:
            v = layers[k]["vars"]
            out.append([np.asarray(v[str(j)]) for j in range(len(v))])
        return out

    convs, dws, bns = ordered("conv2d"), ordered("depthwise_conv2d"), ordered("batch_normalization")
    n = len(LAYERS)
    if len(dws) != n or len(convs) not in (n + 1, n + 2) or len(bns) != 2 * n + 1:
        raise ValueError(f"{src}: {len(convs)} Conv2D, {len(dws)} DepthwiseConv2D and {len(bns)} BatchNormalization "
                         f"layers; a Keras MobileNet v1 has {n + 1} (+1 classifier), {n} and {2 * n + 1}")
    for k, b in enumerate(bns):
        if len(b) != 4:
            raise ValueError(f"{src}: batch_normalization #{k} has {len(b)} variables, expected 4")
    units = [ConvUnit("conv1", hwio_to_oihw(convs[0][0]), tuple(bns[0]), KERAS_BN_EPS)]
    for i in range(n):
        units.append(ConvUnit(f"conv_dw_{i + 1}", depthwise_hwcm_to_oihw(dws[i][0]), tuple(bns[1 + 2 * i]),
                              KERAS_BN_EPS))
        units.append(ConvUnit(f"conv_pw_{i + 1}", hwio_to_oihw(convs[i + 1][0]), tuple(bns[2 + 2 * i]),
                              KERAS_BN_EPS))
    cls_w = cls_b = None
    if len(convs) == n + 2:
        w = convs[-1]
        cls_w = w[0].reshape(-1, w[0].shape[-1]).T
        cls_b = w[1] if len(w) > 1 else None
    return units, cls_w, cls_b


def import_keras(path: str | os.PathLike[str], *, resolution: int | None = None) -> Imported:
    """Read a Keras MobileNet (v1) weights file; the resolution comes from the file name or the flag."""
    h5py = _h5py()
    path = Path(path)
    src = str(path)
    if not path.is_file():
        raise FileNotFoundError(f"Keras weights file not found: {path}")
    if zipfile.is_zipfile(path):  # Keras 3 .keras archive: the weights are model.weights.h5 inside
        with zipfile.ZipFile(path) as z:
            if "model.weights.h5" not in z.namelist():
                raise ValueError(f"{src} is a zip without model.weights.h5: not a Keras 3 .keras file")
            data = z.read("model.weights.h5")
        handle: Any = h5py.File(io.BytesIO(data), "r")
    else:
        try:
            handle = h5py.File(path, "r")
        except OSError as e:
            raise ValueError(f"{src} is not an HDF5 file ({e})") from None
    with handle as f:
        if "layers" in f and "layer_names" not in f.attrs:
            units, cls_w, cls_b = _keras3_units(f["layers"], src)
            keras_version = "3"
        else:
            root = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in root.attrs:
                raise ValueError(f"{src}: neither a Keras 2 weights file (no layer_names) nor Keras 3 (no layers/)")
            units, cls_w, cls_b = _keras2_units(root, src)
            kv = root.attrs.get("keras_version", b"2")
            keras_version = kv.decode() if isinstance(kv, bytes) else str(kv)
    name_alpha, name_res = name_hints(path)
    stem = units[0].weight.shape[0]
    if name_alpha is not None and stem != max(int(32 * name_alpha), 8):
        raise ValueError(f"{src}: the file name says alpha {name_alpha:g} (stem {max(int(32 * name_alpha), 8)} "
                         f"channels) but conv1 has {stem} filters")
    res = resolution or name_res
    return Imported(units=units, classifier_weight=cls_w, classifier_bias=cls_b, preset="tf", format="keras",
                    source=path.name, resolution=res, preprocessing=Preprocessing.tf(res or 224),
                    extra={"keras_version": keras_version})
