"""PyTorch's own deployment formats: a traced TorchScript module (``.pt``) and a ``torch.export`` program (``.pt2``).

Both are made from :func:`~mobilenet.deploy.static.static_model` (fixed input size, the tf preset's SAME
padding frozen) and carry the metadata (:mod:`mobilenet.export.metadata`) as the extra file ``mobilenet.json``;
the program has a dynamic batch dimension. :mod:`mobilenet.runtimes.pytorch` runs both.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path

import torch

from ..checkpoint import atomic_write
from ..deploy.static import static_model
from ..model import MobileNetV1
from ..runtimes.pytorch import METADATA_FILE
from .metadata import artifact_metadata, input_size


def export_torchscript(model: MobileNetV1, path: str | os.PathLike[str], *, resolution: int | None = None) -> Path:
    """Write a traced TorchScript module (``torch.jit.load`` runs it)."""
    size = input_size(model, resolution)
    net = static_model(model, size)
    example = torch.randn(2, model.config.in_chans, *size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, example)
        buf = io.BytesIO()
        torch.jit.save(traced, buf, _extra_files={METADATA_FILE: json.dumps(artifact_metadata(model, size=size))})
    with atomic_write(path) as f:
        f.write(buf.getvalue())
    return Path(path)


def export_program(model: MobileNetV1, path: str | os.PathLike[str], *, resolution: int | None = None) -> Path:
    """Write a ``torch.export`` ExportedProgram (``torch.export.load``) with a dynamic batch dimension."""
    size = input_size(model, resolution)
    net = static_model(model, size)
    example = torch.randn(2, model.config.in_chans, *size)  # batch 2: a size-1 dim may be specialised
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(net, (example,), dynamic_shapes={"x": {0: batch}})
    buf = io.BytesIO()
    torch.export.save(program, buf, extra_files={METADATA_FILE: json.dumps(artifact_metadata(model, size=size))})
    with atomic_write(path) as f:
        f.write(buf.getvalue())
    return Path(path)
