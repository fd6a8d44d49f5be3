"""Export a model to every place MobileNets run: one module per target, one :func:`export` that dispatches.

=================  ==============  ==========================================================  ===============
format             file            how                                                         runs in
=================  ==============  ==========================================================  ===============
onnx               .onnx           ``torch.onnx`` (dynamic batch)                              onnxruntime, openvino
onnx-int8          .onnx           + ONNX Runtime static quantization (QDQ)                     onnxruntime, openvino
torchscript        .pt             ``torch.jit.trace``                                         torch
torch-export       .pt2            ``torch.export`` (dynamic batch)                            torch
tflite             .tflite         ``litert-torch`` (float; NCHW or NHWC input)                tflite
tflite-int8        .tflite         uint8 in/out as Google's quantized files (recorded grids    tflite
                                   exact; calibrated: int8 per-channel; an SSD ends in
                                   TFLite_Detection_PostProcess)
executorch         .pte            ``torch.export`` -> XNNPACK delegate                        executorch
executorch-int8    .pte            PT2E + ``XNNPACKQuantizer`` -> XNNPACK delegate             executorch
openvino           .xml + .bin     ``openvino.convert_model``                                  openvino
openvino-int8      .xml + .bin     from our QDQ ONNX (or NNCF; a detector: NNCF)               openvino
coreml             .mlpackage      ``coremltools`` ML Program (image input, class labels)      Apple only
=================  ==============  ==========================================================  ===============

Every file carries the metadata of :mod:`mobilenet.export.metadata` (class names, preprocessing, config) in
its format's own place; :mod:`mobilenet.runtimes` reads it back, and :func:`check` runs the exported file in
its runtime against the PyTorch model. Classifiers (:class:`~mobilenet.model.MobileNetV1`) export to every
format; detectors (:class:`~mobilenet.detection.ssd.SSD`, which gives its network with box decoding,
``SSD.decoded``) to the non-ONNX ones here, and to ONNX with their post-processing as ONNX ops through
:mod:`mobilenet.detection.export` (the detection layer sits above this one; ``mobilenet export`` takes both).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .metadata import artifact_metadata, input_size, is_detector

FORMATS = ("onnx", "onnx-int8", "torchscript", "torch-export", "tflite", "tflite-int8", "executorch",
           "executorch-int8", "openvino", "openvino-int8", "coreml")
SUFFIXES = {"onnx": ".onnx", "onnx-int8": ".onnx", "torchscript": ".pt", "torch-export": ".pt2", "tflite": ".tflite",
            "tflite-int8": ".tflite",
            "executorch": ".pte", "executorch-int8": ".pte", "openvino": ".xml", "openvino-int8": ".xml",
            "coreml": ".mlpackage"}
INT8 = frozenset(f for f in FORMATS if f.endswith("-int8"))
RECORDED_GRIDS = frozenset({"tflite-int8"})  # may take every grid from a quantized import, without images
DETECTOR_FORMATS = ("tflite", "tflite-int8", "executorch", "executorch-int8", "openvino", "openvino-int8", "coreml")


def _check_format(model: nn.Module, path: Path, format: str, calibration: torch.Tensor | None) -> None:
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if path.suffix != SUFFIXES[format]:
        raise ValueError(f"format {format} writes a {SUFFIXES[format]} file; the output {path.name} says otherwise "
                         f"(name it {path.stem}{SUFFIXES[format]})")
    if format in INT8 and calibration is None and not (format in RECORDED_GRIDS and _has_grids(model)):
        raise ValueError(f"format {format!r} needs calibration images (--calib), unless the model is a quantized "
                         "import carrying its grids")
    detector = is_detector(model)
    if detector and format not in DETECTOR_FORMATS:
        raise ValueError(f"a detector exports to {', '.join(DETECTOR_FORMATS)} here; to {format} with its "
                         "post-processing through mobilenet.detection.export (`mobilenet export` does both)")
    from ..model import MobileNetV1

    if not detector and not isinstance(model, MobileNetV1):
        raise TypeError(f"export expects a MobileNetV1 or an SSD, got {type(model).__name__}")


def _has_grids(model: nn.Module) -> bool:
    from ..weights import weights_info

    q = weights_info(model).quantization
    return q is not None and bool(q.activations or q.ranges)


def export(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    format: str = "onnx",
    resolution: int | None = None,
    calibration: torch.Tensor | None = None,
    opset: int | None = None,
    layout: str = "NCHW",
    batch: int = 1,
    method: str | None = None,
    precision: str = "float16",
    scheme: str = "per-channel",
) -> Path:
    """Write ``model`` in one of ``FORMATS`` (table in the module docstring) and return the path written.

    ``calibration``: images ``(N, C, H, W)``, normalised as the model takes them, for the ``*-int8`` formats.
    ``opset``: ONNX opset (>= 17). ``layout``: TF Lite input layout (``NCHW`` or ``NHWC``). ``method``:
    OpenVINO int8 (``qdq``, a classifier's default, or ``nncf``, a detector's). ``batch``: the fixed batch size of
    a TF Lite or ExecuTorch file (the other formats have a dynamic batch). ``precision``: Core ML compute precision
    (``float16``/``float32``). ``scheme``: a calibrated ``tflite-int8`` file's (``per-channel``: TF Lite's int8
    scheme; ``per-tensor``: uint8 kernels as Google's 2018 files; a quantized import keeps its own).
    """
    path = Path(path)
    _check_format(model, path, format, calibration)
    if format in ("onnx", "onnx-int8"):
        from .onnx import DEFAULT_OPSET, export_onnx, export_onnx_int8

        opset = DEFAULT_OPSET if opset is None else opset
        if format == "onnx":
            return export_onnx(model, path, resolution=resolution, opset=opset)  # type: ignore[arg-type]
        return export_onnx_int8(model, path, calibration, resolution=resolution, opset=opset)  # type: ignore[arg-type]
    if opset is not None:
        raise ValueError(f"opset applies to ONNX formats, not {format}")
    if format == "torchscript":
        from .pytorch import export_torchscript

        return export_torchscript(model, path, resolution=resolution)  # type: ignore[arg-type]
    if format == "torch-export":
        from .pytorch import export_program

        return export_program(model, path, resolution=resolution)  # type: ignore[arg-type]
    if format == "tflite":
        from .tflite import export_tflite

        return export_tflite(model, path, resolution=resolution, layout=layout, batch=batch)
    if format == "tflite-int8":
        from .tflite import export_tflite_int8

        if resolution is not None and input_size(model, resolution) != input_size(model):
            raise ValueError("tflite-int8 is written at the model's own input size")
        return export_tflite_int8(model, path, calibration=calibration, scheme=scheme)
    if format.startswith("executorch"):
        from .executorch import export_executorch

        return export_executorch(model, path, resolution=resolution, calibration=calibration, batch=batch)
    if format.startswith("openvino"):
        from .openvino import export_openvino

        return export_openvino(model, path, resolution=resolution, calibration=calibration, method=method)
    from .coreml import export_coreml

    return export_coreml(model, path, resolution=resolution, precision=precision)


def file_size(path: str | os.PathLike[str]) -> int:
    """Bytes of an exported file: an OpenVINO ``.xml`` with its ``.bin``, a Core ML package folder in full."""
    path = Path(path)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    extra = path.with_suffix(".bin") if path.suffix == ".xml" and path.with_suffix(".bin").is_file() else None
    return path.stat().st_size + (extra.stat().st_size if extra else 0)


@dataclass(frozen=True)
class Check:
    """An exported file run in its runtime against the PyTorch model on the same inputs."""

    runtime: str
    description: str
    max_abs_diff: float  # over every output (logits; a detector's decoded boxes and logits)
    top1_agreement: float | None  # fraction of inputs with the same top-1 class (classifiers)
    inputs: int


def check(path: str | os.PathLike[str], model: nn.Module, x: torch.Tensor | None = None, *,
          threads: int | None = None, **options: Any) -> Check:
    """Run ``path`` in its runtime (:mod:`mobilenet.runtimes`) and compare with ``model`` on ``x``
    (default: 2 seeded random inputs of the exported size). A detector compares its decoded boxes and logits
    (the files of this package; its ONNX files end in post-processing, compared by :mod:`mobilenet.detection`).
    ``options`` go to the runtime (``precision="f32"`` for OpenVINO, which computes in bf16 by default on CPUs
    that have it)."""
    from .. import runtimes

    predictor = runtimes.load(path, threads=threads, **options)
    if x is None:
        c, h, w = predictor.input_shape[1:]
        x = torch.randn(2, int(c), int(h), int(w), generator=torch.Generator().manual_seed(0))  # type: ignore[arg-type]
    with torch.inference_mode():
        if is_detector(model):
            from .metadata import detector_network

            ref = detector_network(model, tuple(x.shape[-2:]))(x)  # type: ignore[arg-type]
        else:
            ref = model.eval()(x)
        out = predictor(x)
    if predictor.outputs_probabilities:  # a full-integer file ends in its softmax
        ref = ref.softmax(dim=1)
    refs = ref if isinstance(ref, tuple) else (ref,)
    outs = out if isinstance(out, tuple) else (out,)
    if len(refs) != len(outs):
        raise ValueError(f"{path} has {len(outs)} outputs, the model {len(refs)}")
    diff = max((o.float() - r.float()).abs().max().item() for o, r in zip(outs, refs, strict=True))
    agree = None if is_detector(model) else (outs[0].argmax(1) == refs[0].argmax(1)).float().mean().item()
    return Check(predictor.runtime, predictor.describe(), diff, agree, len(x))


__all__ = ["DETECTOR_FORMATS", "FORMATS", "INT8", "SUFFIXES", "Check", "artifact_metadata", "check", "export",
           "file_size"]
