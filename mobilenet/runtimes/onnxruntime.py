"""The ONNX Runtime runtime (CPU execution provider) for ``.onnx`` files, float or int8 (QDQ).

The file's ``metadata_props["mobilenet"]`` (JSON: config, class names, preprocessing; written by
:mod:`mobilenet.export.onnx`) is its metadata; a foreign ONNX file runs too, with ImageNet's preprocessing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .predictor import METADATA_KEY, Predictor, require

NAME = "onnxruntime"
SUFFIXES = (".onnx",)
EXTRA = "export"
_DTYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}


def session(path: str | os.PathLike[str], *, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session for ``path``: all graph optimisations on, idle threads not spinning."""
    ort = require("onnxruntime", NAME, EXTRA)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # Idle worker threads sleep instead of spinning: spinning steals the cores from everything else
    # in the process (and from other runtimes timed interleaved with this session).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for unreadable graphs
        raise ValueError(f"ONNX Runtime cannot load {path}: {str(e).splitlines()[0]}") from None


def read_metadata(sess_or_path: Any) -> dict[str, Any]:
    """The ``mobilenet`` metadata of an ONNX file or session (``{}`` for a foreign file)."""
    if isinstance(sess_or_path, (str, os.PathLike)):
        onnx = require("onnx", NAME, EXTRA)
        proto = onnx.load(str(sess_or_path), load_external_data=False)
        props = {p.key: p.value for p in proto.metadata_props}
    else:
        props = dict(sess_or_path.get_modelmeta().custom_metadata_map)
    text = props.get(METADATA_KEY)
    return json.loads(text) if text else {}


class OnnxPredictor(Predictor):
    """An ONNX file in an ONNX Runtime CPU session."""

    runtime = NAME

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None) -> None:
        sess = session(path, threads=threads)
        inp = sess.get_inputs()[0]
        shape = [d if isinstance(d, int) else None for d in inp.shape]
        if len(shape) != 4:
            raise ValueError(f"{path}: input {inp.name!r} has shape {inp.shape}, expected 4 dimensions")
        layout = "NHWC" if shape[3] in (1, 3) and shape[1] not in (1, 3) else "NCHW"
        dtype = _DTYPES.get(inp.type)
        if dtype is None:
            raise ValueError(f"{path}: input type {inp.type} is not supported (float, uint8 or int8)")
        super().__init__(path, metadata=read_metadata(sess), input_shape=shape, layout=layout, input_dtype=dtype,
                         output_names=[o.name for o in sess.get_outputs()], threads=threads)
        self.session, self.input_name = sess, inp.name

    def describe(self) -> str:
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__} (CPU): " + super().describe().split(": ", 1)[1]

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(o) for o in self.session.run(None, {self.input_name: x})]


def load(path: str | os.PathLike[str], *, threads: int | None = None) -> OnnxPredictor:
    """An :class:`OnnxPredictor` for an ``.onnx`` file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    return OnnxPredictor(path, threads=threads)
