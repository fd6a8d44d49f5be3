"""TF Lite, float: Google's ``litert-torch`` converts the static PyTorch graph to a ``.tflite`` without TensorFlow.

The classifier's input is ``(batch, C, H, W)`` float (``layout="NCHW"``) or ``(batch, H, W, C)``
(``layout="NHWC"``, what mobile camera pipelines hand over; a transpose is folded into the graph), with a fixed
batch (1 unless asked), output the logits. A detector (:class:`~mobilenet.detection.ssd.SSD`) is exported as
its network with box decoding (anchors baked in for the input size): outputs ``decoded (1, A, 4)``
normalised x1, y1, x2, y2 and ``logits (1, A, C + 1)``, as the ONNX network part; its post-processing runs
in :mod:`mobilenet.runtimes.detector`.

The metadata (:mod:`mobilenet.export.metadata`) goes into the model's ``metadata`` list as a ``"mobilenet"``
entry (JSON bytes in a buffer), written with the schema object API that ``ai-edge-litert`` ships.
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
from .metadata import artifact_metadata, detector_network, input_size, is_detector

LAYOUTS = ("NCHW", "NHWC")


def add_metadata(flatbuffer: bytes, name: str, data: bytes) -> bytes:
    """The ``.tflite`` bytes with a metadata entry ``name`` -> ``data`` (replacing one of that name)."""
    schema = require("ai_edge_litert.schema_py_generated", "tflite", "tflite")
    import flatbuffers

    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    model.metadata = [m for m in (model.metadata or []) if (m.name or b"") not in (name, name.encode())]
    buffer = schema.BufferT()
    buffer.data = list(data)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = name, len(model.buffers) - 1
    model.metadata.append(entry)
    builder = flatbuffers.Builder(len(flatbuffer) + len(data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


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
