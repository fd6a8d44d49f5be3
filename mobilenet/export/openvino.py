"""OpenVINO IR (``.xml`` + ``.bin``), float or int8.

fp32: ``openvino.convert_model`` of the static PyTorch graph (dynamic batch for a classifier), weights kept in
float32 (``compress_to_fp16=False``: OpenVINO's default would halve them). int8, two ways:

* ``method="nncf"`` (default): NNCF post-training quantization of the float IR on calibration images,
  OpenVINO's own int8 path (its CPU plugin fuses what NNCF marks);
* ``method="qdq"``: our int8 QDQ ONNX converted to IR (:func:`~mobilenet.export.onnx.export_onnx_int8` with
  per-channel symmetric weights and bias correction: a quantization-aware trained import keeps its recorded
  activation grids, and its weights' scale wherever a channel fits a symmetric grid). Symmetric, because the CPU
  plugin's int8 convolutions with the file's non-zero weight zero points ran at about half the speed here.
  :func:`mobilenet.export.onnx.simulate_qdq` of that ONNX is our own simulation of the IR.

Measured on Google's 0.25-128 file imported (recorded grids; calibrated on the 50 even shared photos, all 100
scored, ``benchmarks/deploy_parity.py``): NNCF 45 % top-1 at 84 % agreement with float, ``qdq`` 45 % at 94 %
(float 44 %); with its grids removed (a float model), scored on the 50 odd photos: NNCF 48 %, ``qdq`` 50 %
(float 48 %).

A detector is exported as its network with box decoding (:func:`~mobilenet.export.metadata.detector_network`).
The metadata (:mod:`mobilenet.export.metadata`) is ``rt_info["mobilenet"]`` (JSON text) in the IR.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..deploy.static import static_model
from ..runtimes.predictor import METADATA_KEY, require
from .metadata import artifact_metadata, detector_network, input_size, is_detector

METHODS = ("nncf", "qdq")


def _convert(model: nn.Module, size: tuple[int, int]) -> tuple[Any, bool]:
    ov = require("openvino", "openvino export", "openvino")
    if is_detector(model):
        net, chans, dynamic = detector_network(model, size), 3, False
    else:
        net, chans, dynamic = static_model(model, size), model.config.in_chans, True  # type: ignore[union-attr]
    example = torch.randn(1, chans, *size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        converted = ov.convert_model(net, example_input=example, input=[(-1 if dynamic else 1, chans, *size)])
    return converted, dynamic


# A detector's box decoding (anchors times offsets, exp of the sizes, the corners) must stay float: quantized, its
# graph does not even compile in OpenVINO (a Reshape of the int8 product fails shape inference), and boxes would
# land on a coarse grid. Its convolutions are quantized as a classifier's are.
DECODING_OPS = ("Multiply", "Subtract", "Exp", "Divide", "Add", "Concat")


def _nncf(converted: Any, calibration: torch.Tensor, *, detector: bool = False) -> Any:
    nncf = require("nncf", "openvino int8 export", "openvino")
    dataset = nncf.Dataset([x[None].numpy() for x in calibration])
    ignored = nncf.IgnoredScope(types=list(DECODING_OPS), validate=False) if detector else None
    # NNCF draws its progress bars on stdout, where a JSON result may be going: they belong on stderr; its log
    # lists every op it leaves out.
    with contextlib.redirect_stdout(sys.stderr), _nncf_log(nncf):
        return nncf.quantize(converted, dataset, subset_size=len(calibration), ignored_scope=ignored)


@contextlib.contextmanager
def _nncf_log(nncf: Any) -> Any:
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _save(converted: Any, path: Path, meta: dict[str, Any]) -> Path:
    ov = require("openvino", "openvino export", "openvino")
    if path.suffix != ".xml":
        raise ValueError(f"an OpenVINO IR is written as .xml (+ .bin), got {path.name}")
    converted.set_rt_info(json.dumps(meta), [METADATA_KEY])
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside, then renamed: .bin first, so a reader never finds a new .xml with an old .bin.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.stem}.") as tmp:
        tmp_xml = Path(tmp) / path.name
        ov.save_model(converted, str(tmp_xml), compress_to_fp16=False)
        os.replace(tmp_xml.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(tmp_xml, path)
    return path


def export_openvino(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    resolution: int | None = None,
    calibration: torch.Tensor | None = None,
    method: str = "nncf",
) -> Path:
    """Write ``model`` as OpenVINO IR: float, or int8 when ``calibration`` images ``(N, C, H, W)`` are given."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    path = Path(path)
    size = input_size(model, resolution)
    outputs = ["decoded", "logits"] if is_detector(model) else ["logits"]
    if calibration is None:
        converted, dynamic = _convert(model, size)
        return _save(converted, path, artifact_metadata(model, size=size, dynamic_batch=dynamic, outputs=outputs))
    if tuple(calibration.shape[-2:]) != size:
        raise ValueError(f"calibration images are {tuple(calibration.shape[-2:])}, the export is for {size}")
    if method == "nncf":
        converted, dynamic = _convert(model, size)
        quantized = _nncf(converted, calibration, detector=is_detector(model))
        quantization = {"dtype": "int8", "method": "nncf", "calibration_images": len(calibration)}
    else:
        if is_detector(model):
            raise ValueError("method 'qdq' exports classifiers; use method 'nncf' for a detector")
        ov = require("openvino", "openvino export", "openvino")
        from .onnx import export_onnx_int8

        with tempfile.TemporaryDirectory() as tmp:
            qdq = export_onnx_int8(model, Path(tmp) / "int8.onnx", calibration, resolution=size[0],
                                   symmetric_weights=True)
            quantized, dynamic = ov.convert_model(str(qdq)), True
        quantization = {"dtype": "int8", "method": "onnx-qdq", "weights": "per-channel symmetric int8",
                        "calibration_images": len(calibration)}
    meta = artifact_metadata(model, size=size, dynamic_batch=dynamic, outputs=outputs, quantization=quantization)
    return _save(quantized, path, meta)
