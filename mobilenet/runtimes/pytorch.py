"""The PyTorch runtime: weights files (``.safetensors``), TorchScript (``.pt``) and ``torch.export`` (``.pt2``).

``.safetensors`` is rebuilt with :func:`mobilenet.checkpoint.load` (classifier, BN-folded classifier or SSD)
and runs at any input size its network accepts; ``.pt`` is a traced module (``mobilenet export --format
torchscript`` or the int8 model of ``mobilenet quantize``) and ``.pt2`` an ExportedProgram, both with the
metadata in their ``mobilenet.json`` extra file and a fixed input size.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..weights import weights_info
from .predictor import Predictor

NAME = "torch"
SUFFIXES = (".safetensors", ".pt", ".pt2")
METADATA_FILE = "mobilenet.json"  # the extra file TorchScript and torch.export archives carry


class TorchPredictor(Predictor):
    """A PyTorch module behind the :class:`~mobilenet.runtimes.predictor.Predictor` contract."""

    runtime = NAME

    def __init__(self, path: str | os.PathLike[str], module: nn.Module, metadata: dict[str, Any],
                 input_shape: tuple[int | None, int, int, int], *, threads: int | None = None,
                 any_size: bool = False) -> None:
        super().__init__(path, metadata=metadata, input_shape=input_shape, threads=threads)
        self.module = module
        self.any_size = any_size  # a weights file's network runs at any input size

    def describe(self) -> str:
        kind = {".safetensors": "weights", ".pt": "TorchScript", ".pt2": "torch.export"}.get(self.path.suffix, "")
        threads = torch.get_num_threads() if self.threads is None else self.threads
        return f"torch {torch.__version__} ({kind}): {self.path.name}, {threads} thread(s)"

    @contextlib.contextmanager
    def _threads(self) -> Any:
        if self.threads is None:
            yield
            return
        old = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(old)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        expected = self.input_shape[1:] if not self.any_size else self.input_shape[1:2]
        if x.ndim != 4 or tuple(x.shape[1:1 + len(expected)]) != expected:
            raise ValueError(f"{self.path.name} takes (B, {', '.join(map(str, self.input_shape[1:]))}) inputs, "
                             f"got {tuple(x.shape)}")
        with self._threads(), torch.inference_mode():
            out = self.module(x)
        return tuple(out) if isinstance(out, (tuple, list)) else out

    def to(self, *args: Any, **kwargs: Any) -> TorchPredictor:
        # A weights file may run on any device; TorchScript/torch.export programs stay where they were built.
        if self.path.suffix == ".safetensors":
            self.module.to(*args, **kwargs)
        return self


def _archive(path: Path, loader: Any) -> tuple[Any, dict[str, Any]]:
    extra = {METADATA_FILE: ""}
    module = loader(str(path), extra)
    return module, json.loads(extra[METADATA_FILE]) if extra[METADATA_FILE] else {}


def load(path: str | os.PathLike[str], *, threads: int | None = None) -> TorchPredictor:
    """A :class:`TorchPredictor` for a ``.safetensors``, ``.pt`` or ``.pt2`` file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from ..checkpoint import load as load_weights
        from ..deploy import fold  # noqa: F401  (registers the folded architecture)
        from ..export.metadata import artifact_metadata, input_size

        model = load_weights(path)
        meta = artifact_metadata(model)  # what an export of it would carry: config, classes, preprocessing
        shape = (None, 3 if meta["task"] == "detect" else model.config.in_chans, *input_size(model))
        predictor = TorchPredictor(path, model, meta, shape, threads=threads, any_size=True)
        predictor.weights_info = weights_info(model)  # the weights' own record, grids included
        predictor.source_model = model  # type: ignore[attr-defined]  (detection runs SSD.detect on it)
        return predictor
    if path.suffix == ".pt":
        try:
            module, meta = _archive(path, lambda p, extra: torch.jit.load(p, map_location="cpu", _extra_files=extra))
        except RuntimeError as e:
            raise ValueError(f"{path} is not a TorchScript file ({str(e).splitlines()[0]})") from None
        engine = (meta.get("quantization") or {}).get("engine")
        if engine in torch.backends.quantized.supported_engines:
            torch.backends.quantized.engine = engine
        module.eval()
    elif path.suffix == ".pt2":
        try:
            program, meta = _archive(path, lambda p, extra: torch.export.load(p, extra_files=extra))
        except (RuntimeError, ValueError, KeyError) as e:
            raise ValueError(f"{path} is not a torch.export program ({str(e).splitlines()[0]})") from None
        module = program.module()
    else:
        raise ValueError(f"the torch runtime reads {', '.join(SUFFIXES)} files, got {path.name}")
    cfg = meta.get("config") or {}
    size = (meta.get("quantization") or {}).get("input_size") or meta.get("input_size") or \
        [cfg.get("resolution", 224)] * 2
    shape = (None, int(cfg.get("in_chans", 3)), int(size[0]), int(size[1]))
    return TorchPredictor(path, module, {"task": "classify", **meta}, shape, threads=threads)
