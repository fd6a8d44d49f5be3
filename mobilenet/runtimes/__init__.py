"""Run any file this package writes (or Google ships) in its own runtime, behind one contract.

``load(path)`` picks the runtime from the suffix and returns a :class:`Predictor`: an ``nn.Module`` that
takes ``(B, C, H, W)`` float batches normalised by ``predictor.preprocessing`` and returns the file's
outputs (see :mod:`mobilenet.runtimes.predictor` for the input contracts handled inside)::

    from mobilenet import runtimes
    p = runtimes.load("mobilenet_v1_0.25_128_quant.tflite", threads=1)
    logits = p(x)                      # x: (B, 3, 128, 128) float, as our model takes it
    p.describe(), p.class_names, p.preprocessing

=========================  ===============  =================================================
suffix                     runtime          module (extra)
=========================  ===============  =================================================
.safetensors, .pt, .pt2    ``torch``        :mod:`~mobilenet.runtimes.pytorch`
.onnx                      ``onnxruntime``  :mod:`~mobilenet.runtimes.onnxruntime` ([export])
.xml (+ .bin)              ``openvino``     :mod:`~mobilenet.runtimes.openvino` ([openvino])
.tflite                    ``tflite``       :mod:`~mobilenet.runtimes.tflite` ([tflite])
.pte                       ``executorch``   :mod:`~mobilenet.runtimes.executorch` ([executorch])
=========================  ===============  =================================================

An ONNX file also runs in OpenVINO (``runtime="openvino"``), which is what a user does who takes our ONNX
there. Runtime modules are imported on first use, so a missing runtime costs nothing until it is asked for,
and then fails with one line naming the extra to install (:class:`RuntimeMissingError`).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from .predictor import Predictor, RuntimeMissingError

# runtime name -> module (under mobilenet.runtimes), in the order the time table lists them
MODULES = {"torch": "pytorch", "onnxruntime": "onnxruntime", "openvino": "openvino", "tflite": "tflite",
           "executorch": "executorch"}
RUNTIMES = tuple(MODULES)
SUFFIXES = {".safetensors": "torch", ".pt": "torch", ".pt2": "torch", ".onnx": "onnxruntime", ".xml": "openvino",
            ".tflite": "tflite", ".pte": "executorch"}
# which runtimes can read a suffix besides its own
ALSO_READS = {".onnx": ("openvino",)}
# the Python module each runtime needs (what `available` tries to import)
REQUIRES = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino",
            "tflite": "ai_edge_litert.interpreter", "executorch": "executorch.runtime"}
EXTRAS = {"torch": None, "onnxruntime": "export", "openvino": "openvino", "tflite": "tflite",
          "executorch": "executorch"}


def runtime_for(path: str | os.PathLike[str]) -> str:
    """The runtime that runs a file, from its suffix (ValueError naming the known suffixes)."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: no runtime runs '{suffix or Path(path).name}' files "
                         f"(known: {', '.join(SUFFIXES)})")
    return SUFFIXES[suffix]


def is_artifact(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a deployed file another runtime runs (not a weights file)."""
    return Path(path).suffix.lower() in SUFFIXES and Path(path).suffix.lower() != ".safetensors"


def module(runtime: str) -> Any:
    """The module of a runtime (imports it; the runtime library itself is imported when a file is loaded)."""
    if runtime not in MODULES:
        raise ValueError(f"unknown runtime {runtime!r} (choose from {', '.join(RUNTIMES)})")
    return importlib.import_module(f"{__name__}.{MODULES[runtime]}")


def available(runtime: str) -> str | None:
    """None when ``runtime`` can run here, else why not (one line naming the extra to install)."""
    try:
        importlib.import_module(REQUIRES[runtime])
    except ImportError as e:
        return f"{runtime} is not installed ({e.name}): pip install 'mobilenet[{EXTRAS[runtime]}]'"
    return None


def load(path: str | os.PathLike[str], *, runtime: str | None = None, threads: int | None = None,
         **options: Any) -> Predictor:
    """Load ``path`` in ``runtime`` (default: by suffix); ``options`` go to that runtime's ``load``
    (``precision`` for openvino, ``kernels`` for tflite)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    own = runtime_for(path)
    runtime = runtime or own
    if runtime != own and runtime not in ALSO_READS.get(path.suffix.lower(), ()):
        raise ValueError(f"the {runtime} runtime does not read {path.suffix} files (that is {own}'s)")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return module(runtime).load(path, threads=threads, **options)


def open_model(path: str | os.PathLike[str], *, device: Any = "cpu", threads: int | None = None) -> Any:
    """What ``eval``/``predict``/``detect`` run: a weights file as its PyTorch model on ``device``
    (:func:`mobilenet.checkpoint.load`), any deployed file as its :class:`Predictor` (CPU; one line refusing
    another device). The result is an ``nn.Module`` carrying ``weights_info`` either way."""
    import torch

    from ..checkpoint import load as load_weights

    device = torch.device(device)
    if not is_artifact(path):
        return load_weights(path, map_location=device)
    if device.type != "cpu":
        raise ValueError(f"{Path(path).name} runs in {runtime_for(path)} on the CPU; --device {device} is for weights "
                         "files (.safetensors)")
    return load(path, threads=threads)


def describe(model: Any) -> str:
    """One line naming what runs ``model``: a Predictor's runtime and input contract, or PyTorch and the device."""
    if isinstance(model, Predictor):
        return model.describe()
    import torch

    param = next(model.parameters(), None)
    return f"torch {torch.__version__} ({param.device if param is not None else 'cpu'})"


__all__ = ["RUNTIMES", "SUFFIXES", "Predictor", "RuntimeMissingError", "available", "describe", "is_artifact", "load",
           "module", "open_model", "runtime_for"]
