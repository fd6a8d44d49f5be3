"""TF-slim ``mobilenet_v1_*.ckpt`` checkpoints -> ours (read with ``tf_checkpoint``, no TensorFlow).

Variable names (``MobilenetV1/`` scope), in execution order::

    Conv2d_0/weights                          (3, 3, 3, C)      + Conv2d_0/BatchNorm/{gamma,beta,
                                                                  moving_mean,moving_variance}
    Conv2d_{i}_depthwise/depthwise_weights    (3, 3, C, 1)      + .../BatchNorm/...      i = 1 .. 13
    Conv2d_{i}_pointwise/weights              (1, 1, Cin, Cout) + .../BatchNorm/...
    Logits/Conv2d_1c_1x1/{weights (1, 1, C, 1001), biases}

BN eps is 1e-3 (slim's mobilenet_v1_arg_scope); a BN without gamma (``scale=False``) gets gamma = 1.
The resolution is not stored: it comes from a ``mobilenet_v1_{alpha}_{res}`` file name or the flag.
"""

from __future__ import annotations

import os
import re

import numpy as np

from ..model import LAYERS
from ..preprocessing import Preprocessing
from .imported import ConvUnit, Imported, depthwise_hwcm_to_oihw, hwio_to_oihw
from .tf_checkpoint import checkpoint_prefix, read_checkpoint

SCOPE = "MobilenetV1"
SLIM_BN_EPS = 1e-3
_NAME = re.compile(r"mobilenet_v1_(?:\d+(?:\.\d+)?)_(\d+)")


def slim_unit_names() -> list[tuple[str, str]]:
    """(variable scope, kernel name) of each conv in execution order."""
    names = [(f"{SCOPE}/Conv2d_0", "weights")]
    for i in range(1, len(LAYERS) + 1):
        names.append((f"{SCOPE}/Conv2d_{i}_depthwise", "depthwise_weights"))
        names.append((f"{SCOPE}/Conv2d_{i}_pointwise", "weights"))
    return names


def import_slim(path: str | os.PathLike[str], *, resolution: int | None = None) -> Imported:
    """Map a TF-slim MobileNet v1 checkpoint (any of its files, or the prefix) onto our layout."""
    prefix = checkpoint_prefix(path)
    src = prefix.name
    variables = read_checkpoint(prefix)

    def get(name: str) -> np.ndarray:
        if name not in variables:
            close = sorted(k for k in variables if k.startswith(SCOPE))[:3]
            raise ValueError(f"{src}: missing variable {name!r} (not a TF-slim MobileNet v1? "
                             f"it has e.g. {close or sorted(variables)[:3]})")
        return variables[name]

    units = []
    for scope, kernel in slim_unit_names():
        w = get(f"{scope}/{kernel}")
        weight = depthwise_hwcm_to_oihw(w) if kernel == "depthwise_weights" else hwio_to_oihw(w)
        c = weight.shape[0]
        bn = f"{scope}/BatchNorm"
        gamma = variables.get(f"{bn}/gamma", np.ones(c, np.float32))
        units.append(ConvUnit(scope.split("/", 1)[1], weight,
                              (gamma, get(f"{bn}/beta"), get(f"{bn}/moving_mean"), get(f"{bn}/moving_variance")),
                              SLIM_BN_EPS))
    cls_w = cls_b = None
    logits = f"{SCOPE}/Logits/Conv2d_1c_1x1"
    if f"{logits}/weights" in variables:
        w = variables[f"{logits}/weights"]
        cls_w = w.reshape(-1, w.shape[-1]).T  # (1, 1, C, N) -> (N, C)
        cls_b = variables.get(f"{logits}/biases")
    m = _NAME.search(src)
    res = resolution or (int(m.group(1)) if m else None)
    return Imported(units=units, classifier_weight=cls_w, classifier_bias=cls_b, preset="tf", format="slim",
                    source=src, resolution=res, preprocessing=Preprocessing.tf(res or 224))
