"""The ExecuTorch runtime (its Python bindings, with the XNNPACK backend) for ``.pte`` programs.

Our programs carry their metadata as a constant method ``mobilenet_metadata`` returning the JSON text
(written by :mod:`mobilenet.export.executorch`). ExecuTorch's CPU thread pool is one per process and can
only be sized before the first program loads (:func:`set_threads`): a benchmark of several thread counts
runs each in its own process.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .predictor import Predictor, require

NAME = "executorch"
SUFFIXES = (".pte",)
EXTRA = "executorch"
METADATA_METHOD = "mobilenet_metadata"
_DTYPES = {6: "float32", 0: "uint8", 1: "int8"}  # ExecuTorch ScalarType codes


def _runtime() -> Any:
    # torchao (imported by the bindings) logs one line per optional CUDA kernel library it cannot load.
    quiet = logging.getLogger("torchao")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        module = require("executorch.runtime", NAME, EXTRA)
        return module.Runtime.get()
    finally:
        quiet.setLevel(level)


_POOL_THREADS: int | None = None  # the pool size the first program of this process was loaded with
_LOADED = False


def set_threads(threads: int | None) -> None:
    """Size ExecuTorch's process-wide CPU thread pool (XNNPACK runs on it) before the first program loads.

    Resizing it under a loaded XNNPACK program crashes the process (seen here: a glibc assertion, heap
    corruption), so once a program is loaded, another size is refused: run it in another process.
    """
    global _POOL_THREADS
    from executorch.extension.pybindings import portable_lib

    current = _POOL_THREADS or portable_lib._threadpool_get_thread_count()
    if threads is None or int(threads) == current:
        return
    if _LOADED:
        raise ValueError(f"ExecuTorch's thread pool is one per process and already runs programs with {current} "
                         f"thread(s); {threads} needs another process")
    portable_lib._unsafe_reset_threadpool(int(threads))
    _POOL_THREADS = int(threads)


class ExecuTorchPredictor(Predictor):
    """A ``.pte`` program's ``forward`` method in the ExecuTorch runtime."""

    runtime = NAME

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None) -> None:
        global _LOADED
        rt = _runtime()
        set_threads(threads)
        try:
            program = rt.load_program(str(path))
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"ExecuTorch cannot load {path}: {str(e).splitlines()[0]}") from None
        if "forward" not in program.method_names:
            raise ValueError(f"{path} has no 'forward' method (methods: {', '.join(sorted(program.method_names))})")
        meta: dict[str, Any] = {}
        if METADATA_METHOD in program.method_names:
            meta = json.loads(program.load_method(METADATA_METHOD).execute([])[0])
        method = program.load_method("forward")
        info = method.metadata.input_tensor_meta(0)
        shape = list(info.sizes())
        dtype = _DTYPES.get(int(info.dtype()))
        if len(shape) != 4 or dtype is None:
            raise ValueError(f"{path}: input {tuple(shape)} {info.dtype()} is not a 4-d float/uint8/int8 image batch")
        layout = meta.get("input_layout") or ("NHWC" if shape[3] in (1, 3) and shape[1] not in (1, 3) else "NCHW")
        super().__init__(path, metadata=meta, input_shape=shape, layout=layout, input_dtype=dtype,
                         threads=threads)
        _LOADED = True
        self.program, self.method = program, method

    def describe(self) -> str:
        from importlib.metadata import version

        return f"executorch {version('executorch')} (XNNPACK): " + super().describe().split(": ", 1)[1]

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        outs = self.method.execute([torch.from_numpy(x)])
        return [o.numpy() for o in outs]


def load(path: str | os.PathLike[str], *, threads: int | None = None) -> ExecuTorchPredictor:
    """An :class:`ExecuTorchPredictor` for a ``.pte`` file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"ExecuTorch program not found: {path}")
    return ExecuTorchPredictor(path, threads=threads)
