"""Import published MobileNet v1 weights (Keras, TF Lite, TF-slim, Caffe, timm / Hugging Face) into ours.

``convert(src, out)`` reads a foreign file, maps it onto our state-dict layout, checks it strictly
and writes our weights file (safetensors + metadata: config, class names, preprocessing, provenance).
``import_model(src)`` does the same but returns the model. Each format lives in its own module and
returns an :class:`~mobilenet.convert.imported.Imported`; nothing here needs TensorFlow.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

from ..model import MobileNetV1

FORMATS = ("keras", "tflite", "slim", "caffe", "timm")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def detect_format(src: str | os.PathLike[str]) -> str:
    """Guess the format of ``src`` from its name and first bytes (ValueError when unknown)."""
    path = Path(src)
    name = path.name.lower()
    if name.endswith(".index") or ".data-" in name or Path(f"{path}.index").is_file():
        return "slim"
    if not path.is_file():
        raise FileNotFoundError(f"source weights not found: {path}")
    with open(path, "rb") as f:
        head = f.read(8)
    if head[4:8] == b"TFL3" or name.endswith(".tflite"):
        return "tflite"
    if head == _HDF5_MAGIC or name.endswith((".h5", ".hdf5")):
        return "keras"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if "model.weights.h5" in names:
            return "keras"
        return "timm"  # torch.save archives are zips too
    if name.endswith(".caffemodel"):
        return "caffe"
    if name.endswith((".safetensors", ".pth", ".pt", ".bin")):
        return "timm"
    raise ValueError(f"cannot tell the format of {path} (head bytes {head!r}); "
                     f"pass --source-format (format=) one of {', '.join(FORMATS)}")


def _import(src: str | os.PathLike[str], fmt: str, *, resolution: int | None, prototxt: str | None) -> Any:
    if fmt == "keras":
        from .keras import import_keras

        return import_keras(src, resolution=resolution)
    if fmt == "tflite":
        from ..tflite.classifier import import_tflite

        return import_tflite(src)
    if fmt == "slim":
        from .slim import import_slim

        return import_slim(src, resolution=resolution)
    if fmt == "caffe":
        from .caffe import import_caffe

        return import_caffe(src, prototxt=prototxt, resolution=resolution)
    if fmt == "timm":
        from .timm import import_timm

        return import_timm(src, resolution=resolution)
    raise ValueError(f"unknown format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")


def import_model(
    src: str | os.PathLike[str],
    format: str = "auto",
    *,
    width_mult: float | None = None,
    resolution: int | None = None,
    drop_background: bool = False,
    prototxt: str | os.PathLike[str] | None = None,
) -> MobileNetV1:
    """Read foreign weights into a ``MobileNetV1`` (eval mode) with ``model.weights_info`` set (class names,
    preprocessing, source, the grids of a quantized file), as ``mobilenet.load`` does.

    ``width_mult`` is checked against the file (a mismatch is an error); ``resolution`` overrides what
    the file name/input shape says; ``drop_background`` turns a 1001-way TF classifier into 1000 classes.
    """
    from ..weights import Source, WeightsInfo
    from .imported import assemble, build_model, default_class_labels

    fmt = detect_format(src) if format == "auto" else format
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")
    imp = _import(src, fmt, resolution=resolution, prototxt=str(prototxt) if prototxt else None)
    cfg, state, names = assemble(imp, width_mult=width_mult, resolution=resolution, drop_background=drop_background)
    model = build_model(cfg, state, str(src))
    pre = imp.preprocessing
    if pre is not None and pre.resolution != cfg.resolution:
        from dataclasses import replace

        pre = replace(pre, resolution=cfg.resolution)
    # human-readable names beside the WordNet ids in class_names
    labels = default_class_labels(cfg.num_classes) if names is not None and imp.class_names is None else None
    model.weights_info = WeightsInfo(  # type: ignore[assignment]
        classes=names, class_labels=labels, preprocessing=pre, quantization=imp.quantization,
        source=Source(format=fmt, file=imp.source, details={"drop_background": drop_background, **imp.extra}))
    return model


def default_output(src: str | os.PathLike[str]) -> Path:
    """``<name>.safetensors`` in the current folder (sources often sit in read-only data folders)."""
    name = Path(src).name
    for suffix in (".index", ".data-00000-of-00001", ".tflite", ".h5", ".keras", ".caffemodel", ".pth", ".pt",
                   ".bin", ".safetensors", ".ckpt"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    if name.endswith(".weights"):
        name = name[: -len(".weights")]
    return Path.cwd() / f"{name}.safetensors"


def convert(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    format: str = "auto",
    *,
    width_mult: float | None = None,
    resolution: int | None = None,
    drop_background: bool = False,
    prototxt: str | os.PathLike[str] | None = None,
) -> Path:
    """Convert foreign weights to our weights file; returns its path (see :func:`import_model`)."""
    from ..checkpoint import save

    out_path = Path(out) if out is not None else default_output(src)
    if out_path.resolve() == Path(src).resolve():
        raise ValueError(f"refusing to overwrite the source {src}; choose another --out")
    fmt = detect_format(src) if format == "auto" else format
    if fmt == "tflite":
        from ..tflite.ssd import import_detect_tflite, is_detection_tflite

        if is_detection_tflite(src):  # TF Object Detection API SSD: a detector, not a classifier
            det = import_detect_tflite(src)
            return save(det, out_path, info=det.weights_info)
    model = import_model(src, format, width_mult=width_mult, resolution=resolution,
                         drop_background=drop_background, prototxt=prototxt)
    return save(model, out_path, info=model.weights_info)


__all__ = ["FORMATS", "convert", "default_output", "detect_format", "import_model"]
