"""The OpenVINO runtime (CPU plugin) for OpenVINO IR (``.xml`` + ``.bin``), and for ONNX files on request.

Our IR carries its metadata in ``rt_info["mobilenet"]`` (JSON; written by :mod:`mobilenet.export.openvino`).
``precision`` is OpenVINO's ``INFERENCE_PRECISION_HINT``: ``None`` keeps the plugin's own default
(bf16 on CPUs with AMX/AVX512-BF16, f32 elsewhere: what a deployed app gets), ``"f32"`` computes in
float32 (the parity tests use it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .predictor import METADATA_KEY, Predictor, require

NAME = "openvino"
SUFFIXES = (".xml",)
EXTRA = "openvino"
PRECISIONS = ("f32", "bf16", "f16")
_DTYPES = {"f32": "float32", "u8": "uint8", "i8": "int8"}


def core() -> Any:
    """The process-wide ``openvino.Core`` (creating one loads the plugins: do it once)."""
    global _CORE
    if _CORE is None:
        ov = require("openvino", NAME, EXTRA)
        _CORE = ov.Core()
    return _CORE


_CORE: Any = None


def default_precision() -> str:
    """The CPU plugin's default inference precision on this machine (``bf16`` where the CPU has it, else ``f32``)."""
    return core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()


def read_metadata(model: Any) -> dict[str, Any]:
    """The ``mobilenet`` metadata in an ``openvino.Model``'s rt_info (``{}`` when absent)."""
    if not model.has_rt_info([METADATA_KEY]):
        return {}
    return json.loads(model.get_rt_info([METADATA_KEY]).astype(str))


class OpenVINOPredictor(Predictor):
    """An OpenVINO model compiled for the CPU."""

    runtime = NAME

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None,
                 precision: str | None = None) -> None:
        if precision is not None and precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} or None, got {precision!r}")
        c = core()
        try:
            model = c.read_model(str(path))
        except RuntimeError as e:
            raise ValueError(f"OpenVINO cannot read {path}: {str(e).splitlines()[0]}") from None
        meta = read_metadata(model)
        if not meta and Path(path).suffix == ".onnx":
            from .onnxruntime import read_metadata as onnx_metadata

            meta = onnx_metadata(path)
        inp = model.inputs[0]
        pshape = inp.get_partial_shape()
        if pshape.rank.get_length() != 4:
            raise ValueError(f"{path}: input has shape {pshape}, expected 4 dimensions")
        shape = [d.get_length() if d.is_static else None for d in pshape]
        layout = "NHWC" if shape[3] in (1, 3) and shape[1] not in (1, 3) else "NCHW"
        etype = inp.get_element_type().get_type_name()
        if etype not in _DTYPES:
            raise ValueError(f"{path}: input element type {etype} is not supported (f32, u8 or i8)")
        config: dict[str, Any] = {}
        if threads:
            config.update({"INFERENCE_NUM_THREADS": int(threads), "NUM_STREAMS": 1})
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        super().__init__(path, metadata=meta, input_shape=shape, layout=layout, input_dtype=_DTYPES[etype],
                         output_names=[o.get_any_name() if o.get_names() else f"output_{i}"
                                       for i, o in enumerate(model.outputs)], threads=threads)
        self.compiled = c.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def describe(self) -> str:
        import openvino

        version = openvino.__version__.split("-")[0]
        return f"openvino {version} (CPU, {self.precision}): " + super().describe().split(": ", 1)[1]

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        # share_inputs: the request reads the (C-contiguous, right-typed) array in place instead of copying it
        # first; the call is synchronous, so the array outlives its use
        result = self.request.infer({0: x}, share_inputs=True)
        return [np.asarray(result[o]) for o in self.compiled.outputs]


def load(path: str | os.PathLike[str], *, threads: int | None = None, precision: str | None = None
         ) -> OpenVINOPredictor:
    """An :class:`OpenVINOPredictor` for an IR ``.xml`` (its ``.bin`` beside it) or an ``.onnx`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"OpenVINO model not found: {path}")
    if path.suffix == ".xml" and not path.with_suffix(".bin").is_file():
        raise FileNotFoundError(f"{path}: its weights {path.with_suffix('.bin').name} are missing beside it")
    return OpenVINOPredictor(path, threads=threads, precision=precision)
