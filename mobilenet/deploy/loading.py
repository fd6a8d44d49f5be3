"""What deployment commands accept as a model: a weights file, or a zoo name (random weights, for timing)."""

from __future__ import annotations

import os
from pathlib import Path

from ..model import MobileNetV1


def load_model(spec: str | os.PathLike[str], *, preset: str | None = None) -> MobileNetV1:
    """A weights file (plain or BN-folded) or a variant name such as ``mobilenet_v1_100_224``; eval mode, CPU.

    ``preset`` applies to names only (a file carries its own config).
    """
    from ..checkpoint import WeightsFileError, load
    from ..zoo import VARIANTS, create_model
    from . import fold  # noqa: F401  (registers the folded architecture with mobilenet.load)

    text = os.fspath(spec)
    if text in VARIANTS and not Path(text).exists():
        return create_model(text, **({"preset": preset} if preset else {})).eval()
    if not Path(text).exists():
        raise FileNotFoundError(f"weights file not found: {text} (nor is it a model name such as "
                                f"mobilenet_v1_100_224; see `mobilenet models`)")
    model = load(text)
    if not isinstance(model, MobileNetV1):
        raise WeightsFileError(f"{text} holds a {type(model).__name__}, not a MobileNet v1 classifier")
    return model
