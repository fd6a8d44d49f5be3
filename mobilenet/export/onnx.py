"""ONNX: float (``torch.onnx``'s ``torch.export``-based exporter) and int8 QDQ (ONNX Runtime's static quantization).

The file has the named input ``"input"`` ``(batch, C, H, W)`` (dynamic batch) and output ``"logits"``
``(batch, num_classes)``, and carries the metadata (:mod:`mobilenet.export.metadata`) in its
``metadata_props``: key ``"mobilenet"`` (JSON), plus ``"preprocessing"`` and ``"class_names"`` on their own for
other tools. Detectors go through :func:`mobilenet.detection.export.export_detector_onnx` (with or without NMS).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import atomic_write
from ..deploy.static import static_model
from ..model import MobileNetV1
from .metadata import artifact_metadata, input_size

INPUT_NAME, OUTPUT_NAME = "input", "logits"
DEFAULT_OPSET = 18


def _require_onnx() -> Any:
    try:
        import onnx
        import onnxscript  # noqa: F401  (the torch.export-based exporter needs it)
    except ImportError:
        raise ImportError("ONNX export needs onnx and onnxscript: pip install 'mobilenet[export]'") from None
    return onnx


def export_onnx(
    model: MobileNetV1,
    path: str | os.PathLike[str],
    *,
    resolution: int | None = None,
    opset: int = DEFAULT_OPSET,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as an ONNX file (opset >= 17, dynamic batch).

    ``resolution``: input size (default ``model.config.resolution``). ``metadata``: what goes into
    ``metadata_props`` (default: :func:`~mobilenet.export.metadata.artifact_metadata` of ``model``).
    """
    if not isinstance(model, MobileNetV1):
        raise TypeError(f"export_onnx expects a MobileNetV1, got {type(model).__name__}")
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    onnx = _require_onnx()
    size = input_size(model, resolution)
    meta = artifact_metadata(model, size=size) if metadata is None else metadata
    net = static_model(model, size)
    # batch 2, not 1: tracers may specialise a dimension of size 1 as a constant.
    example = torch.randn(2, model.config.in_chans, *size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)  # the exporter logs a line per torchvision op it cannot find
    try:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tmp_path = Path(tmp) / "model.onnx"
            torch.onnx.export(net, (example,), str(tmp_path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              opset_version=opset, dynamic_shapes={"x": {0: batch}}, dynamo=True,
                              external_data=False, verbose=False, report=False)
            proto = onnx.load(str(tmp_path))
    finally:
        onnx_log.setLevel(level)
    props = {"mobilenet": json.dumps(meta), "preprocessing": json.dumps(meta.get("preprocessing")),
             "class_names": json.dumps(meta.get("class_names"))}
    for k, v in props.items():
        proto.metadata_props.add(key=k, value=v)
    proto.doc_string = f"MobileNet v1 {model.config.width_mult}x, {size[0]}x{size[1]} input; see metadata_props"
    with atomic_write(path) as f:
        f.write(proto.SerializeToString())
    return Path(path)


def export_onnx_int8(
    model: MobileNetV1,
    path: str | os.PathLike[str],
    calibration: torch.Tensor,
    *,
    resolution: int | None = None,
    opset: int = DEFAULT_OPSET,
    use_recorded: bool = True,
) -> Path:
    """int8 QDQ ONNX: :func:`export_onnx`, then ONNX Runtime static quantization calibrated on ``calibration``.

    With ``use_recorded`` a quantization-aware trained import keeps the grids it was trained on (see
    :func:`mobilenet.deploy.quantize.recorded_grids`) in place of calibrated ones.
    """
    from ..deploy.quantize import quantize_onnx, recorded_grids

    size = input_size(model, resolution if resolution is not None else int(calibration.shape[-1]))
    ranges, grids = recorded_grids(model) if use_recorded else ({}, {})
    with tempfile.TemporaryDirectory() as tmp:
        float_path = export_onnx(model, Path(tmp) / "float.onnx", resolution=size[0], opset=opset)
        return quantize_onnx(float_path, path, calibration, activation_ranges=ranges, weight_grids=grids)


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``"mobilenet"`` metadata (config, class names, preprocessing) of an exported ONNX file."""
    from ..runtimes.onnxruntime import read_metadata

    meta = read_metadata(path)
    if not meta:
        raise ValueError(f"{path} has no 'mobilenet' metadata: it was not exported by mobilenet")
    return meta
