"""TF Lite, float: Google's ``litert-torch`` converts the static PyTorch graph to a ``.tflite`` without TensorFlow.

The classifier's input is ``(batch, C, H, W)`` float (``layout="NCHW"``) or ``(batch, H, W, C)``
(``layout="NHWC"``, what mobile camera pipelines hand over; a transpose is folded into the graph), with a fixed
batch (1 unless asked), output the logits. A detector (:class:`~mobilenet.detection.ssd.SSD`) is exported as
its network with box decoding (anchors baked in for the input size): outputs ``decoded (1, A, 4)``
normalised x1, y1, x2, y2 and ``logits (1, A, C + 1)``, as the ONNX network part; its post-processing runs
in :mod:`mobilenet.runtimes.detector`.

Full integer (``tflite-int8``, :func:`export_tflite_int8`): the graph of Google's quantized MobileNet v1 files,
written by the TF Lite wing (:mod:`mobilenet.tflite.quantized`): uint8 pixels in, uint8 probabilities out, the
grids of a quantization-aware trained import kept exactly (per-tensor uint8: exporting Google's file imported
gives back its uint8 outputs) or calibrated on images (int8 kernels per output channel and int8 activations,
biases corrected; the per-tensor uint8 scheme on request). litert-torch's own quantization path (PT2E with its
quantizer) writes int8 per-channel graphs with float input and no control over the grids, so it reaches neither
the exact round trip nor the uint8 interface.

The metadata (:mod:`mobilenet.export.metadata`) goes into the model's ``metadata`` list as a ``"mobilenet"``
entry (JSON bytes in a buffer), written by the TF Lite wing's writer (:mod:`mobilenet.tflite.writer`).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import atomic_write
from ..deploy.static import static_model
from ..runtimes.predictor import METADATA_KEY, require
from ..runtimes.quiet import quiet_stderr
from ..tflite.writer import add_metadata
from .metadata import artifact_metadata, detector_network, input_size, is_detector

LAYOUTS = ("NCHW", "NHWC")


@contextlib.contextmanager
def _quiet_converter() -> Iterator[Any]:
    with warnings.catch_warnings(), quiet_stderr():  # importing it logs TensorFlow's start-up lines too
        warnings.simplefilter("ignore")
        litert_torch = require("litert_torch", "tflite export", "tflite")
        shown = litert_torch.config.show_progress
        litert_torch.config.show_progress = False  # its own step-by-step log; we print one line
        try:
            yield litert_torch
        finally:
            litert_torch.config.show_progress = shown


def convert(model: nn.Module, size: tuple[int, int], layout: str = "NCHW", batch: int = 1) -> bytes:
    """The float ``.tflite`` bytes of ``model`` (a classifier or an SSD) for a fixed ``batch`` at ``size``."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if is_detector(model):
        net: nn.Module = detector_network(model, size)
        chans = 3
    else:
        net = static_model(model, size)
        chans = model.config.in_chans  # type: ignore[union-attr]
    example = torch.randn(batch, chans, *size)
    with _quiet_converter() as litert_torch:
        if layout == "NHWC":
            net = litert_torch.to_channel_last_io(net, args=[0]).eval()
            example = example.permute(0, 2, 3, 1).contiguous()
        edge = litert_torch.convert(net.eval(), (example,))
        with tempfile.TemporaryDirectory() as tmp:
            edge.export(str(Path(tmp) / "model.tflite"))
            return (Path(tmp) / "model.tflite").read_bytes()


def export_tflite(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    resolution: int | None = None,
    layout: str = "NCHW",
    batch: int = 1,
) -> Path:
    """Write ``model`` (classifier or SSD) as a float ``.tflite`` with its metadata; see the module docstring.

    ``batch``: the file's fixed batch size (TF Lite files have one; litert-torch cannot lower a dynamic batch
    through the tf preset's padding). The runtime runs other batch sizes in chunks of it.
    """
    size = input_size(model, resolution)
    flat = convert(model, size, layout, batch)
    meta = artifact_metadata(model, size=size, layout=layout,
                             outputs=["decoded", "logits"] if is_detector(model) else ["logits"])
    flat = add_metadata(flat, METADATA_KEY, json.dumps(meta).encode())
    with atomic_write(path) as f:
        f.write(flat)
    return Path(path)


def export_tflite_int8(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    calibration: torch.Tensor | None = None,
    use_recorded: bool = True,
    scheme: str = "per-channel",
    bias_correction: bool = True,
) -> Path:
    """Write a classifier or an SSD as a full-integer ``.tflite`` (uint8 pixels in; uint8 probabilities out, or
    the four outputs of ``TFLite_Detection_PostProcess``; see the module docstring): on its recorded grids when it
    is a quantized import (``use_recorded``), else calibrated on ``calibration`` images ``(N, C, H, W)``
    normalised as the model takes them, in ``scheme`` (``"per-channel"``: int8 kernels per output channel and int8
    activations, TF Lite's int8 scheme; ``"per-tensor"``: uint8 as Google's 2018 files), the biases corrected for
    the kernels' rounding (``bias_correction``)."""
    from ..tflite import quantized

    detector = is_detector(model)
    grids = (quantized.ssd_grids if detector else quantized.classifier_grids)(
        model, calibration, use_recorded=use_recorded, scheme=scheme, bias_correction=bias_correction)
    scheme_name = {"per-tensor": "per-tensor uint8 (TF Lite 2018)",
                   "per-channel": "per-channel int8 kernels, int8 activations"}[grids.scheme]
    how = {"dtype": "uint8", "scheme": scheme_name, "grids": grids.source, "input_folded": grids.fold_input}
    if grids.source == "calibrated" and calibration is not None:
        how.update(calibration_images=len(calibration), bias_correction=bool(grids.biases))
    extra: dict[str, Any] = {"outputs": ["probabilities"]}
    if detector:
        extra = {"outputs": ["boxes", "classes", "scores", "count"],
                 "postprocess_op": quantized.postprocess_options(model)}
    meta = artifact_metadata(model, size=input_size(model), layout="NHWC", input_dtype="uint8", quantization=how,
                             **extra)
    write = quantized.ssd_flatbuffer if detector else quantized.classifier_flatbuffer
    flat = write(model, grids, metadata={METADATA_KEY: json.dumps(meta).encode()})
    with atomic_write(path) as f:
        f.write(flat)
    return Path(path)
