"""What every importer produces: weights in our state-dict layout plus what the source file told us.

Importers read a foreign file into a list of :class:`ConvUnit` (one per conv-BN-act of the network,
in execution order: stem, then dw/pw of each block) and an optional classifier; :func:`assemble`
turns that into our state dict, infers the width multiplier from the channel counts, and
:func:`build_model` loads it strictly into a ``MobileNetV1`` (a mismatch names the first bad key).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..checkpoint import load_state_strict
from ..imagenet_classes import imagenet_class_names, imagenet_wnids
from ..model import LAYERS, STEM_CHANNELS, MobileNetConfig, MobileNetV1, block_specs
from ..preprocessing import Preprocessing
from ..weights import Quantization

NUM_UNITS = 1 + 2 * len(LAYERS)  # stem + (dw, pw) per block


# ---- layout conversions (source layouts -> PyTorch OIHW) -----------------------------------------
def hwio_to_oihw(w: np.ndarray) -> np.ndarray:
    """TF/Keras conv kernel (kh, kw, in, out) -> (out, in, kh, kw)."""
    return np.ascontiguousarray(w.transpose(3, 2, 0, 1))


def ohwi_to_oihw(w: np.ndarray) -> np.ndarray:
    """TF Lite conv kernel (out, kh, kw, in) -> (out, in, kh, kw)."""
    return np.ascontiguousarray(w.transpose(0, 3, 1, 2))


def depthwise_hwcm_to_oihw(w: np.ndarray) -> np.ndarray:
    """TF/Keras depthwise kernel (kh, kw, C, multiplier=1) -> grouped conv (C, 1, kh, kw)."""
    if w.ndim != 4 or w.shape[3] != 1:
        raise ValueError(f"depthwise kernel must be (kh, kw, C, 1), got {tuple(w.shape)} (channel multiplier != 1)")
    return np.ascontiguousarray(w[:, :, :, 0].transpose(2, 0, 1)[:, None])


def depthwise_1hwc_to_oihw(w: np.ndarray) -> np.ndarray:
    """TF Lite depthwise kernel (1, kh, kw, C) -> grouped conv (C, 1, kh, kw)."""
    if w.ndim != 4 or w.shape[0] != 1:
        raise ValueError(f"TF Lite depthwise kernel must be (1, kh, kw, C), got {tuple(w.shape)}")
    return np.ascontiguousarray(w[0].transpose(2, 0, 1)[:, None])


# ---- what an importer hands over ----------------------------------------------------------------
@dataclass
class ConvUnit:
    """One conv-BN-act: an OIHW kernel and either BN statistics or a folded bias.

    ``bn`` is (gamma, beta, mean, var) with the source's ``eps``; a unit whose BN was folded into
    the conv (TF Lite) carries ``bias`` instead and gets an identity BN with beta = bias.
    """

    name: str  # the source's name for error messages, e.g. "conv_dw_3" or "Conv2d_3_depthwise"
    weight: np.ndarray
    bn: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
    eps: float = 1e-3
    bias: np.ndarray | None = None


@dataclass
class Imported:
    """Weights in source order plus the facts the file told us (None: not told, take a flag/default)."""

    units: list[ConvUnit]
    classifier_weight: np.ndarray | None  # (num_classes, C) or None without a top
    classifier_bias: np.ndarray | None
    preset: str  # "tf" or "paper"
    format: str
    source: str
    resolution: int | None = None
    preprocessing: Preprocessing | None = None
    class_names: list[str] | None = None
    quantization: Quantization | None = None  # the grids of a quantized (QAT) file
    extra: dict[str, Any] = field(default_factory=dict)  # more facts about the source (WeightsInfo.source.details)


def default_class_names(num_classes: int) -> list[str] | None:
    """ImageNet WordNet ids for 1000- or 1001-way (``background`` first) classifiers, else None.

    WordNet ids, not lemmas, because they are unique (two classes are called "crane") and they are the
    folder names of ImageNet's train/val layout, so ``mobilenet eval`` matches classes by name.
    """
    if num_classes in (1000, 1001):
        return imagenet_wnids(background=num_classes == 1001)
    return None


def default_class_labels(num_classes: int) -> list[str] | None:
    """Human-readable ImageNet names ("tench, Tinca tinca") aligned with :func:`default_class_names`."""
    if num_classes in (1000, 1001):
        return imagenet_class_names(background=num_classes == 1001)
    return None


def _unit_channels(width_mult: float) -> list[int]:
    """Output channels of every conv in execution order: stem, then (dw = block input, pw = block output)."""
    specs = block_specs(MobileNetConfig(width_mult=width_mult))
    return [specs[0][0]] + [c for cin, cout, _ in specs for c in (cin, cout)]


def infer_width_mult(units: list[ConvUnit], source: str) -> float:
    """The width multiplier whose channel counts (TF-slim rounding) match every conv of the file."""
    if len(units) != NUM_UNITS:
        raise ValueError(f"{source}: expected {NUM_UNITS} convolutions (stem + 13 depthwise separable blocks), "
                         f"found {len(units)}: not a MobileNet v1")
    outs = [u.weight.shape[0] for u in units]
    for alpha in (outs[-1] / LAYERS[-1][0], outs[0] / STEM_CHANNELS):
        if _unit_channels(alpha) == outs:
            return float(round(alpha, 6))
    # name the first conv whose width disagrees with the width the last layer implies
    cfg = MobileNetConfig(width_mult=outs[-1] / LAYERS[-1][0])
    expected = _unit_channels(cfg.width_mult)
    i = next(k for k, (a, b) in enumerate(zip(outs, expected, strict=True)) if a != b)
    raise ValueError(f"{source}: {units[i].name} has {outs[i]} output channels, width {cfg.width_mult:g} "
                     f"(from the last layer) expects {expected[i]}: not a MobileNet v1 channel plan")


def _unit_state(prefix: str, unit: ConvUnit, eps: float) -> dict[str, np.ndarray]:
    c = unit.weight.shape[0]
    if unit.bn is not None:
        gamma, beta, mean, var = (np.asarray(a, dtype=np.float32).reshape(-1) for a in unit.bn)
        # our BN divides by sqrt(var + eps_ours); keep sqrt(var + eps_source) exact
        var = var + np.float32(unit.eps - eps)
    else:
        # Folded BN: identity with the folded bias as beta. var = 1 - eps makes var + eps == 1.0
        # exactly in float32 for eps = 1e-3 and 1e-5 (tested), so y = conv(x) + bias.
        bias = np.zeros(c, np.float32) if unit.bias is None else np.asarray(unit.bias, np.float32).reshape(-1)
        gamma, beta, mean = np.ones(c, np.float32), bias, np.zeros(c, np.float32)
        var = np.full(c, 1 - eps, np.float32)
    for what, a in (("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var)):
        if a.shape != (c,):
            raise ValueError(f"{unit.name}: batch-norm {what} has shape {a.shape}, the conv has {c} channels")
    return {f"{prefix}.conv.weight": unit.weight, f"{prefix}.bn.weight": gamma, f"{prefix}.bn.bias": beta,
            f"{prefix}.bn.running_mean": mean, f"{prefix}.bn.running_var": var,
            f"{prefix}.bn.num_batches_tracked": np.array(0, dtype=np.int64)}


def assemble(imp: Imported, *, width_mult: float | None = None, resolution: int | None = None,
             drop_background: bool = False) -> tuple[MobileNetConfig, dict[str, torch.Tensor], list[str] | None]:
    """(config, state dict, class names) of our model for an import; flags override what the file implies."""
    inferred = infer_width_mult(imp.units, imp.source)
    if width_mult is not None and abs(width_mult - inferred) > 1e-6:
        raise ValueError(f"{imp.source} holds a width-{inferred:g} MobileNet (stem {imp.units[0].weight.shape[0]} "
                         f"channels), not the requested width_mult={width_mult:g}")
    w, b = imp.classifier_weight, imp.classifier_bias
    names = imp.class_names
    if w is not None and names is None:
        names = default_class_names(w.shape[0])
    if drop_background:
        if w is None or w.shape[0] != 1001:
            got = "no classifier" if w is None else f"{w.shape[0]} classes"
            raise ValueError(f"--drop-background needs a 1001-class model (background at 0), {imp.source} has {got}")
        w, b = w[1:], (b[1:] if b is not None else None)
        names = names[1:] if names is not None else None
    num_classes = 0 if w is None else int(w.shape[0])
    res = resolution or imp.resolution or 224
    cfg = MobileNetConfig(width_mult=inferred, resolution=res, num_classes=num_classes, preset=imp.preset)  # type: ignore[arg-type]
    eps = 1e-3 if imp.preset == "tf" else 1e-5
    state: dict[str, np.ndarray] = {}
    prefixes = ["stem"] + [f"blocks.{i}.{part}" for i in range(len(LAYERS)) for part in ("dw", "pw")]
    for prefix, unit in zip(prefixes, imp.units, strict=True):
        state.update(_unit_state(prefix, unit, eps))
    if w is not None:
        w2 = np.asarray(w, np.float32).reshape(w.shape[0], -1)
        state["classifier.weight"] = w2[:, :, None, None] if imp.preset == "tf" else w2
        state["classifier.bias"] = (np.zeros(num_classes, np.float32) if b is None
                                    else np.asarray(b, np.float32).reshape(-1))
    tensors = {k: torch.from_numpy(np.array(v, dtype=np.int64 if k.endswith("num_batches_tracked") else np.float32))
               for k, v in state.items()}
    return cfg, tensors, names


def build_model(cfg: MobileNetConfig, state: dict[str, torch.Tensor], source: str) -> MobileNetV1:
    """A MobileNetV1 for ``cfg`` with ``state`` loaded strictly (first mismatch named), in eval mode."""
    model = MobileNetV1.from_config(cfg)
    load_state_strict(model, state, source)
    return model.eval()
