"""Named variants: the paper's / TF-slim's grid of width multipliers x resolutions.

Names follow ``mobilenet_v1_{round(100 * width_mult):03d}_{resolution}``, e.g. ``mobilenet_v1_075_160``.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import replace
from typing import Any

from .model import MobileNetConfig, MobileNetV1

WIDTH_MULTS: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25)
RESOLUTIONS: tuple[int, ...] = (224, 192, 160, 128)
_NAME = re.compile(r"^mobilenet_v1_(\d{3})_(\d+)$")


def variant_name(width_mult: float, resolution: int) -> str:
    return f"mobilenet_v1_{round(100 * width_mult):03d}_{resolution}"


VARIANTS: dict[str, dict[str, Any]] = {
    variant_name(a, r): {"width_mult": a, "resolution": r} for a in WIDTH_MULTS for r in RESOLUTIONS
}


def list_models(pattern: str = "*") -> list[str]:
    """Names of the 16 grid variants (α descending, then resolution descending), filtered by a glob."""
    import fnmatch

    return [n for n in VARIANTS if fnmatch.fnmatch(n, pattern)]


def variant_config(name: str, **overrides: Any) -> MobileNetConfig:
    """The config of a named variant with keyword overrides (e.g. ``preset="tf", num_classes=1001``)."""
    if name not in VARIANTS:
        close = difflib.get_close_matches(name, VARIANTS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(VARIANTS)}"
        if _NAME.match(name):
            hint = f"; the grid has widths {WIDTH_MULTS} and resolutions {RESOLUTIONS}" + (
                f" (closest: {', '.join(close)})" if close else "")
        raise ValueError(f"unknown model {name!r}{hint}")
    return MobileNetConfig(**{**VARIANTS[name], **overrides})


# Settings that change no tensor shape: applied to loaded weights (the network runs at any resolution).
APPLICABLE = ("resolution", "stem_stride", "dropout")


def create_model(name: str, *, pretrained: bool | str = False, weights: str | os.PathLike[str] | None = None,
                 **overrides: Any) -> MobileNetV1:
    """Build a named variant, e.g. ``create_model("mobilenet_v1_050_160", num_classes=10)``.

    ``pretrained=True``: the published ImageNet weights of the variant, from the local cache
    (:mod:`mobilenet.cache`, filled by ``mobilenet pretrained``); a string picks one source (``"keras"``,
    ``"slim"``, ``"tflite_quant"``, ``"huggingface"``, ``"timm"``). Missing, a one-line
    :class:`~mobilenet.cache.PretrainedNotFound` says what to download and the command that puts it in place.

    ``weights``: a weights file written by ``mobilenet.save`` or ``mobilenet convert``. Either way the file
    decides the architecture (preset, width, padding): ``overrides`` that would change it are refused, while
    ``resolution``, ``stem_stride`` and ``dropout`` are applied, and a ``num_classes`` other than the file's
    keeps the body and puts a new classifier on it (fine-tuning), as timm's ``pretrained=True`` does.
    The weights' record (class names, preprocessing, source) comes along as ``model.weights_info``, and the
    model comes back in eval mode, as from ``mobilenet.load`` (a new model without weights is in training mode).
    """
    config = variant_config(name, **overrides)  # validates the name and the overrides first
    if pretrained:
        if weights is not None:
            raise ValueError("give pretrained= or weights=, not both")
        from .cache import pretrained_path

        weights = pretrained_path(name, None if pretrained is True else str(pretrained))
    if weights is None:
        return MobileNetV1.from_config(config)
    from .checkpoint import WeightsFileError, load_weights_into, read_metadata

    meta = read_metadata(weights)
    if meta.get("architecture") != "mobilenet_v1":
        raise WeightsFileError(f"{weights} holds a {meta.get('architecture')!r}, not a mobilenet_v1 classifier")
    saved = MobileNetConfig.from_dict(meta.get("config") or {})
    wanted = {**VARIANTS[name], **overrides}
    num_classes = wanted.pop("num_classes", saved.num_classes)
    for key, value in wanted.items():
        if key not in APPLICABLE and value != getattr(saved, key):
            raise WeightsFileError(f"{weights} holds a {key}={getattr(saved, key)!r} model: {name} with "
                                   f"{key}={value!r} cannot load it (leave {key} out, or pick the variant of the file)")
    model = MobileNetV1.from_config(replace(saved, **{k: v for k, v in wanted.items() if k in APPLICABLE}))
    load_weights_into(model, weights)
    info = model.weights_info
    if info.preprocessing is not None and info.preprocessing.resolution != model.config.resolution:
        info = info.replace(preprocessing=replace(info.preprocessing, resolution=model.config.resolution))
    if num_classes != saved.num_classes:  # fine-tuning: the body's weights, a new classifier
        model.reset_classifier(num_classes)
        info = info.replace(classes=None, class_labels=None)
    model.weights_info = info
    return model.eval()
