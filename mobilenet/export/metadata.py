"""What every exported file carries, whatever the target: one JSON dict, written by each target its own way.

``architecture`` and ``config`` rebuild the source model; ``task`` is ``classify`` or ``detect``; from the
model's :class:`~mobilenet.weights.WeightsInfo` come ``class_names`` (and readable ``extra.class_labels`` for
ImageNet; ``extra.source``/``format`` for imports) and ``preprocessing`` (resolution, crop, mean/std, channel
order); ``input_size``/``input_layout``/``input_dtype`` say how to feed the file; ``quantization`` says how it
was made int8 (absent for float files). The runtimes (:mod:`mobilenet.runtimes`) read it back from each format.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..preprocessing import Preprocessing
from ..weights import weights_info


def is_detector(model: nn.Module) -> bool:
    """Whether ``model`` is an SSD (it can give its decoded network; see :func:`detector_network`)."""
    return callable(getattr(model, "decoded", None)) and hasattr(getattr(model, "config", None), "image_size")


def input_size(model: nn.Module, resolution: int | tuple[int, int] | None = None) -> tuple[int, int]:
    """(height, width) an export is made for: ``resolution`` if given, else the model's own."""
    if resolution is not None:
        h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
        if min(h, w) < 32:
            raise ValueError(f"the input size must be >= 32 pixels, got {h}x{w}")
        return int(h), int(w)
    cfg = model.config  # type: ignore[union-attr]
    if is_detector(model):
        return tuple(int(v) for v in cfg.image_size)  # type: ignore[return-value]
    return int(cfg.resolution), int(cfg.resolution)


def detector_network(model: nn.Module, size: tuple[int, int]) -> nn.Module:
    """What every target exports of an SSD (asked of the model, ``SSD.decoded``: the detection layer sits above
    this one): (B, 3, H, W) -> decoded boxes (B, A, 4) normalised x1, y1, x2, y2 (anchors baked in for ``size``)
    and class logits (B, A, C + 1)."""
    return model.decoded(size)  # type: ignore[operator]


def artifact_metadata(model: nn.Module, *, size: tuple[int, int] | None = None, layout: str = "NCHW",
                      input_dtype: str = "float32", **fields: Any) -> dict[str, Any]:
    """The metadata dict of an export of ``model`` (see the module docstring); ``fields`` are added as given."""
    info = weights_info(model)
    config = getattr(model, "config", None)
    size = size or input_size(model)
    if is_detector(model):
        cfg = model.config  # type: ignore[union-attr]
        pre = {"resolution": size[0], "crop_fraction": 1.0, "crop_mode": "crop_resize", "interpolation": "bilinear",
               "mean": list(cfg.pixel_mean), "std": list(cfg.pixel_std), "channel_order": "RGB"}
        meta: dict[str, Any] = {**model.to_metadata(), "task": "detect",  # type: ignore[operator]
                                "postprocess": cfg.postprocess.to_dict()}
    else:
        pre = {**(info.preprocessing or Preprocessing.imagenet(size[0])).to_dict(), "resolution": size[0]}
        meta = {"architecture": "mobilenet_v1_folded" if getattr(model, "bn_folded", False) else "mobilenet_v1",
                "config": config.to_dict(), "task": "classify"}  # type: ignore[union-attr]
    meta.update(class_names=info.classes, preprocessing=pre, input_size=list(size), input_layout=layout,
                input_dtype=input_dtype)
    extra: dict[str, Any] = {}
    if info.class_labels:
        extra["class_labels"] = list(info.class_labels)
    if info.source is not None:  # provenance (format, file), not the grids: those stay with the weights
        extra.update(source=info.source.file, format=info.source.format)
    if extra:
        meta["extra"] = extra
    meta.update(fields)
    return meta
