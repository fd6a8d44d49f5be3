"""Export to ONNX (float and int8 QDQ), TorchScript and ``torch.export`` programs.

Every export goes through :func:`~mobilenet.deploy.static.static_model`: a fixed input size (the tf
preset's SAME padding frozen for it) and a dynamic batch dimension. The ONNX file has named input
``"input"`` ``(batch, C, H, W)`` and output ``"logits"`` ``(batch, num_classes)``, and carries the
preprocessing, class names and config in its ``metadata_props`` (key ``"mobilenet"``, JSON, plus
``"preprocessing"`` and ``"class_names"`` on their own for other runtimes).
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import atomic_write
from ..model import MobileNetV1
from .quantize import METADATA_FILE, model_metadata
from .static import static_model

FORMATS = ("onnx", "onnx-int8", "torchscript", "torch-export")
SUFFIXES = {"onnx": ".onnx", "onnx-int8": ".onnx", "torchscript": ".pt", "torch-export": ".pt2"}
INPUT_NAME, OUTPUT_NAME = "input", "logits"
DEFAULT_OPSET = 18


def _example(model: MobileNetV1, resolution: int | None, batch: int = 2) -> tuple[torch.Tensor, int]:
    r = model.config.resolution if resolution is None else int(resolution)
    # batch 2, not 1: tracers may specialise a dimension of size 1 as a constant.
    return torch.randn(batch, model.config.in_chans, r, r), r


def export_onnx(
    model: MobileNetV1,
    path: str | os.PathLike[str],
    *,
    resolution: int | None = None,
    opset: int = DEFAULT_OPSET,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as an ONNX file (opset >= 17, dynamic batch) via the ``torch.export``-based exporter.

    ``resolution``: input size (default ``model.config.resolution``). ``metadata``: what goes into
    ``metadata_props`` (default: :func:`~mobilenet.deploy.quantize.model_metadata` of ``model``).
    """
    if not isinstance(model, MobileNetV1):
        raise TypeError(f"export_onnx expects a MobileNetV1, got {type(model).__name__}")
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    try:
        import onnx
    except ImportError:
        raise ImportError("ONNX export needs onnx and onnxscript: pip install 'mobilenet[export]'") from None
    meta = model_metadata(model) if metadata is None else metadata
    example, r = _example(model, resolution)
    net = static_model(model, r)
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
    proto.doc_string = f"MobileNet v1 {meta.get('config', {}).get('width_mult')}x, {r}x{r} input; see metadata_props"
    with atomic_write(path) as f:
        f.write(proto.SerializeToString())
    return Path(path)


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``"mobilenet"`` metadata (config, class names, preprocessing) of an exported ONNX file."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    if "mobilenet" not in props:
        raise ValueError(f"{path} has no 'mobilenet' metadata: it was not exported by mobilenet")
    return json.loads(props["mobilenet"])


def export_torchscript(model: MobileNetV1, path: str | os.PathLike[str], *, resolution: int | None = None) -> Path:
    """Write a traced TorchScript module (``torch.jit.load`` runs it); metadata in extra file ``mobilenet.json``."""
    example, r = _example(model, resolution)
    net = static_model(model, r)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, example)
        buf = io.BytesIO()
        torch.jit.save(traced, buf, _extra_files={METADATA_FILE: json.dumps(model_metadata(model))})
    with atomic_write(path) as f:
        f.write(buf.getvalue())
    return Path(path)


def export_program(model: MobileNetV1, path: str | os.PathLike[str], *, resolution: int | None = None) -> Path:
    """Write a ``torch.export`` ExportedProgram (``torch.export.load``) with a dynamic batch dimension."""
    example, r = _example(model, resolution)
    net = static_model(model, r)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(net, (example,), dynamic_shapes={"x": {0: batch}})
    buf = io.BytesIO()
    torch.export.save(program, buf, extra_files={METADATA_FILE: json.dumps(model_metadata(model))})
    with atomic_write(path) as f:
        f.write(buf.getvalue())
    return Path(path)


def export(
    model: MobileNetV1,
    path: str | os.PathLike[str],
    *,
    format: str = "onnx",
    resolution: int | None = None,
    calibration: torch.Tensor | None = None,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export in one of ``FORMATS``; ``"onnx-int8"`` needs ``calibration`` images ``(N, C, H, W)``."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if format == "onnx":
        return export_onnx(model, path, resolution=resolution, opset=opset)
    if format == "onnx-int8":
        if calibration is None:
            raise ValueError("format 'onnx-int8' needs calibration images")
        from .quantize import quantize_onnx

        r = int(calibration.shape[-1]) if resolution is None else resolution
        with tempfile.TemporaryDirectory() as tmp:
            float_path = export_onnx(model, Path(tmp) / "float.onnx", resolution=r, opset=opset)
            return quantize_onnx(float_path, path, calibration)
    if format == "torchscript":
        return export_torchscript(model, path, resolution=resolution)
    return export_program(model, path, resolution=resolution)


def onnx_session(path: str | os.PathLike[str], *, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session for ``path`` (all graph optimisations on)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError("running ONNX models needs onnxruntime: pip install 'mobilenet[export]'") from None
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # Idle worker threads sleep instead of spinning: spinning steals the cores from everything else
    # in the process (and from PyTorch rows timed interleaved with this session).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


