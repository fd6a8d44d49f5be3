"""ExecuTorch: a ``.pte`` program lowered to the XNNPACK delegate, float or int8.

fp32: ``torch.export`` of the static graph for a fixed batch size (1 unless asked; a dynamic batch lowered
here accepted at most 15 images per call whatever its declared bound, so the runtime chunks instead), lowered
with ``to_edge_transform_and_lower`` and the XNNPACK partitioner. int8: PT2E quantization with the
``XNNPACKQuantizer`` (per-channel symmetric int8 weights, int8 activations calibrated on images), then the
same lowering, so XNNPACK runs quantized convolutions. A detector is exported as its network with box
decoding (:func:`~mobilenet.export.metadata.detector_network`).

The metadata (:mod:`mobilenet.export.metadata`) is a constant method ``mobilenet_metadata`` returning the
JSON text; :mod:`mobilenet.runtimes.executorch` reads it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import atomic_write
from ..deploy.static import static_model
from ..runtimes.executorch import METADATA_METHOD
from ..runtimes.predictor import require
from ..runtimes.quiet import quiet_stderr
from .metadata import artifact_metadata, detector_network, input_size, is_detector


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # torchao logs a line per optional CUDA kernel it cannot load, torch.export warns about deprecations.
    log = logging.getLogger("torchao")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), quiet_stderr():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _graph(model: nn.Module, size: tuple[int, int], batch: int) -> tuple[nn.Module, torch.Tensor]:
    """(static module, example batch) for a classifier or an SSD."""
    if is_detector(model):
        return detector_network(model, size), torch.randn(batch, 3, *size)
    return static_model(model, size), torch.randn(batch, model.config.in_chans, *size)  # type: ignore[union-attr]


def quantize_pt2e(net: nn.Module, calibration: torch.Tensor, *, batch_size: int = 16) -> nn.Module:
    """The PT2E int8 graph of ``net`` (XNNPACK quantizer: per-channel symmetric int8 weights, int8 activations),
    calibrated on ``calibration`` ``(N, C, H, W)`` in batches (captured with a dynamic batch for that; the
    result is exported again at the program's fixed batch)."""
    xnnpack = require("executorch.backends.xnnpack.quantizer.xnnpack_quantizer", "executorch export", "executorch")
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = xnnpack.XNNPACKQuantizer().set_global(
        xnnpack.get_symmetric_quantization_config(is_per_channel=True))
    example = calibration[:2] if len(calibration) > 1 else calibration.repeat(2, 1, 1, 1)
    dim = {"x": {0: torch.export.Dim("batch", min=1, max=max(batch_size, 2))}}
    prepared = prepare_pt2e(torch.export.export(net, (example,), dynamic_shapes=dim).module(), quantizer)
    with torch.no_grad():
        for batch in calibration.split(batch_size):
            prepared(batch)
    return convert_pt2e(prepared)


def export_executorch(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    resolution: int | None = None,
    calibration: torch.Tensor | None = None,
    batch: int = 1,
) -> Path:
    """Write ``model`` as an XNNPACK ``.pte``: float, or int8 when ``calibration`` images ``(N, C, H, W)`` are given.

    ``batch``: the program's fixed batch size; the runtime runs other batch sizes in chunks of it.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    exir = require("executorch.exir", "executorch export", "executorch")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    size = input_size(model, resolution)
    net, example = _graph(model, size, batch)
    quantization = None
    with _quiet():
        if calibration is not None:
            if tuple(calibration.shape[-2:]) != size:
                raise ValueError(f"calibration images are {tuple(calibration.shape[-2:])}, the export is for {size}")
            net = quantize_pt2e(net, calibration)
            quantization = {"dtype": "int8", "method": "pt2e-xnnpack", "weights": "per-channel symmetric int8",
                            "calibration_images": len(calibration)}
        meta = artifact_metadata(model, size=size,
                                 outputs=["decoded", "logits"] if is_detector(model) else ["logits"],
                                 **({"quantization": quantization} if quantization else {}))
        program = exir.to_edge_transform_and_lower(
            torch.export.export(net, (example,)), partitioner=[XnnpackPartitioner()],
            constant_methods={METADATA_METHOD: json.dumps(meta)}).to_executorch()
    with atomic_write(path) as f:
        f.write(program.buffer)
    return Path(path)
