"""OpenVINO IR (``.xml`` + ``.bin``), float or int8.

fp32: ``openvino.convert_model`` of the static PyTorch graph (dynamic batch for a classifier), weights kept in
float32 (``compress_to_fp16=False``: OpenVINO's default would halve them). int8, two ways:

* ``method="qdq"`` (a classifier's default): our int8 QDQ ONNX converted to IR
  (:func:`~mobilenet.export.onnx.export_onnx_int8` with per-channel symmetric weights and bias correction: a
  quantization-aware trained import keeps its recorded activation grids, and its weights' scale wherever a channel
  fits a symmetric grid). Symmetric, because the CPU plugin's int8 convolutions with the file's non-zero weight
  zero points ran at about half the speed here. :func:`mobilenet.export.onnx.simulate_qdq` of that ONNX is our own
  simulation of the IR;
* ``method="nncf"`` (a detector's default and only method): NNCF post-training quantization of the float IR on
  calibration images, OpenVINO's own int8 path (its CPU plugin fuses what NNCF marks).

``qdq`` is the classifier's default because it keeps more of the float model's answers at the same speed
(benchmarks/deploy_parity.py measures both methods' agreement with float, ``mobilenet bench`` their speed).

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


def default_method(model: nn.Module) -> str:
    """The int8 method :func:`export_openvino` uses unless told: ``qdq`` for a classifier, ``nncf`` for a detector
    (whose box decoding our QDQ ONNX does not hold)."""
    return "nncf" if is_detector(model) else "qdq"


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
    method: str | None = None,
    qdq_onnx: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``model`` as OpenVINO IR: float, or int8 when ``calibration`` images ``(N, C, H, W)`` are given, by
    ``method`` (module docstring; default: ``qdq`` for a classifier, ``nncf`` for a detector). ``qdq_onnx``: the
    int8 ONNX of ``model`` that :func:`~mobilenet.export.onnx.export_onnx_int8` wrote with ``symmetric_weights``
    (for a model without recorded grids, what ``format="onnx-int8"`` writes), converted instead of writing it again
    (``qdq`` only)."""
    method = default_method(model) if method is None else method
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if qdq_onnx is not None and (method != "qdq" or calibration is None):
        raise ValueError(f"qdq_onnx is the int8 ONNX that method 'qdq' converts (with calibration images); method is "
                         f"{method!r}{'' if calibration is not None else ', no calibration images'}")
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
            qdq = qdq_onnx or export_onnx_int8(model, Path(tmp) / "int8.onnx", calibration, resolution=size[0],
                                               symmetric_weights=True)
            quantized, dynamic = ov.convert_model(str(qdq)), True
        quantization = {"dtype": "int8", "method": "onnx-qdq", "weights": "per-channel symmetric int8",
                        "calibration_images": len(calibration)}
    meta = artifact_metadata(model, size=size, dynamic_batch=dynamic, outputs=outputs, quantization=quantization)
    return _save(quantized, path, meta)
