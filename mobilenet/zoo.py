"""Named variants: the paper's / TF-slim's grid of width multipliers x resolutions.

Names follow ``mobilenet_v1_{round(100 * width_mult):03d}_{resolution}``, e.g. ``mobilenet_v1_075_160``.
"""

from __future__ import annotations

import difflib
import re
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


def create_model(name: str, *, weights: str | None = None, **overrides: Any) -> MobileNetV1:
    """Build a named variant, e.g. ``create_model("mobilenet_v1_050_160", num_classes=10)``.

    ``weights``: a weights file written by ``mobilenet.save`` or ``mobilenet convert``. Its config
    supplies whatever the name and ``overrides`` leave open (preset, class count, ...), so
    ``create_model("mobilenet_v1_025_128", weights="slim.safetensors")`` needs no more; a file of
    another width fails naming the first mismatched tensor.
    """
    if weights is None:
        return MobileNetV1.from_config(variant_config(name, **overrides))
    from .checkpoint import load_weights_into, read_metadata

    stored = read_metadata(weights).get("config") or {}
    stored = {k: v for k, v in stored.items() if k not in VARIANTS.get(name, {})}
    model = MobileNetV1.from_config(variant_config(name, **{**stored, **overrides}))
    return load_weights_into(model, weights)
