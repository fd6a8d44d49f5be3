"""The one contract every runtime gives: a :class:`Predictor` runs a deployed file on NCHW float batches.

A predictor takes exactly what our PyTorch model takes, ``(B, C, H, W)`` float32 normalised by the
file's own :attr:`Predictor.preprocessing`, and returns what the file outputs (logits for a
classifier; one tensor per output otherwise), as torch tensors. What the file itself wants is handled
inside, once, here:

* **layout**: an NHWC input (TF Lite, mobile camera pipelines) gets the batch transposed;
* **dtype**: a uint8 input takes *pixels* (TF Lite's convention for image models: Google's quantized
  classifiers and detectors, and our full-integer exports), so the normalised batch is mapped back to
  pixels through the preprocessing, ``round(x * std + mean)``, which is exact for batches made by
  :class:`~mobilenet.preprocessing.Preprocessing`; an int8 input takes pixels - 128. Quantized outputs are
  dequantized with their scale and zero point;
* **batch**: a file with a fixed batch size runs larger batches in chunks (the last one padded).

A predictor is an ``nn.Module`` (with no parameters), so everything that runs a model here (``evaluate``,
``predict``, the time table) runs a deployed file unchanged; its ``weights_info`` (a
:class:`~mobilenet.weights.WeightsInfo`: class names, readable labels, preprocessing) is what the file carries,
as on a model loaded from a weights file, and ``metadata`` the file's whole metadata dict.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..preprocessing import Preprocessing
from ..weights import WeightsInfo

METADATA_KEY = "mobilenet"  # the name under which every exported file carries its JSON metadata


class RuntimeMissingError(ImportError):
    """The runtime a file needs is not installed (the message says which extra to install)."""


def require(module: str, runtime: str, extra: str) -> Any:
    """Import ``module`` or raise :class:`RuntimeMissingError` naming the pip extra that brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise RuntimeMissingError(f"the {runtime} runtime needs {e.name or module}: "
                                  f"pip install 'mobilenet[{extra}]'") from None


class Predictor(nn.Module):
    """A deployed file loaded in its runtime behind one contract (see the module docstring).

    Subclasses set the attributes in ``__init__`` and implement :meth:`run` on the file's own input
    (already converted by :meth:`feed`).
    """

    runtime: str = ""

    def __init__(self, path: str | os.PathLike[str], *, metadata: dict[str, Any] | None,
                 input_shape: Sequence[int | None], layout: str = "NCHW", input_dtype: str = "float32",
                 input_quantization: tuple[float, int] | None = None, output_names: Sequence[str] = (),
                 threads: int | None = None) -> None:
        super().__init__()
        if layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout must be NCHW or NHWC, got {layout!r}")
        self.path = Path(path)
        self.metadata: dict[str, Any] = dict(metadata or {})
        b, *rest = input_shape
        if layout == "NHWC":
            h, w, c = rest
            rest = [c, h, w]
        self.input_shape: tuple[int | None, ...] = (b if b and b > 0 else None, *(int(v) for v in rest))
        self.layout = layout
        self.input_dtype = input_dtype
        self.input_quantization = input_quantization
        self.output_names = list(output_names)
        self.threads = threads
        # what mobilenet.predict/evaluate read from a model: the file's classes, labels, effective preprocessing
        self.weights_info = WeightsInfo.from_header(self.metadata).replace(preprocessing=self.preprocessing)
        self.eval()

    # ---- what the file carries ----
    @property
    def task(self) -> str:
        """``"classify"`` or ``"detect"``."""
        return str(self.metadata.get("task") or ("detect" if "ssd" in str(self.metadata.get("architecture", ""))
                                                 else "classify"))

    @property
    def outputs_probabilities(self) -> bool:
        """The file's classifier output is already probabilities (it ends in its softmax: a full-integer TF Lite
        file, Google's or ours), not logits: read it without another softmax (:mod:`mobilenet.inference`)."""
        return self.task == "classify" and self.metadata.get("outputs") == ["probabilities"]

    @property
    def resolution(self) -> tuple[int, int]:
        """(height, width) of the input."""
        return int(self.input_shape[2]), int(self.input_shape[3])  # type: ignore[arg-type]

    @property
    def preprocessing(self) -> Preprocessing:
        """How images become this file's input: the metadata's, else inferred from the input (see ``_default``)."""
        pre = self.metadata.get("preprocessing")
        if pre:
            return Preprocessing.from_dict({**pre, "resolution": self.resolution[0]})
        return self._default_preprocessing()

    def _default_preprocessing(self) -> Preprocessing:
        # A file without our metadata: a quantized uint8 input says its own normalisation (the interpreter
        # sees (pixel - zero_point) * scale); otherwise ImageNet's. TF Lite files override this (TF's [-1, 1]).
        r = self.resolution[0]
        if self.input_quantization is not None and self.input_dtype == "uint8":
            scale, zero = self.input_quantization
            return Preprocessing(resolution=r, crop_mode="crop_resize", mean=(float(zero),) * 3,
                                 std=(1 / scale,) * 3)
        return Preprocessing.imagenet(r)

    @property
    def class_names(self) -> list[str] | None:
        names = self.metadata.get("class_names")
        return list(names) if names else None

    @property
    def config(self) -> Any:
        """A classifier's ``MobileNetConfig`` when the file carries it (a detector's config is
        ``metadata["config"]``, read by :mod:`mobilenet.detection`)."""
        cfg = self.metadata.get("config")
        if not cfg or self.task != "classify":
            return None
        from ..model import MobileNetConfig

        return MobileNetConfig.from_dict(cfg)

    def describe(self) -> str:
        """One line: runtime, input contract, threads (printed beside every number measured with it)."""
        batch = self.input_shape[0] or "any"
        return (f"{self.runtime}: {self.path.name}, input {self.input_dtype} {self.layout} batch {batch}"
                f"{'' if self.threads is None else f', {self.threads} thread(s)'}")

    # ---- running ----
    def feed(self, x: torch.Tensor) -> np.ndarray:
        """The file's own input for a normalised NCHW float batch: layout, dtype (pixels for integers)."""
        if self.input_dtype in ("uint8", "int8"):
            pre = self.preprocessing
            mean = torch.tensor(pre.mean, dtype=torch.float32).view(1, -1, 1, 1)
            std = torch.tensor(pre.std, dtype=torch.float32).view(1, -1, 1, 1)
            pixels = torch.round(x * std + mean).clamp_(0, 255)
            x = pixels - 128 if self.input_dtype == "int8" else pixels
        if self.layout == "NHWC":
            x = x.permute(0, 2, 3, 1)
        return np.ascontiguousarray(x.numpy().astype(self.input_dtype, copy=False))

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """Run the file on its own input (one batch of the size it accepts); float32 outputs."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """``(B, C, H, W)`` normalised float -> the file's outputs (one tensor, or a tuple)."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape[1:]:
            raise ValueError(f"{self.path.name} takes (B, {', '.join(map(str, self.input_shape[1:]))}) inputs, "
                             f"got {tuple(x.shape)}")
        device = x.device
        xs = x.detach().to("cpu", torch.float32)
        fixed = self.input_shape[0]
        if fixed is None or fixed == len(xs):
            outs = self.run(self.feed(xs))
        else:  # a fixed-batch file: run in chunks of its size, the last one padded with zeros
            parts = []
            for start in range(0, len(xs), fixed):
                chunk = xs[start:start + fixed]
                n = len(chunk)
                if n < fixed:
                    chunk = torch.cat([chunk, chunk.new_zeros(fixed - n, *chunk.shape[1:])])
                parts.append([o[:n] for o in self.run(self.feed(chunk))])
            outs = [np.concatenate(group) for group in zip(*parts, strict=True)]
        tensors = tuple(torch.from_numpy(np.ascontiguousarray(o, dtype=np.float32)).to(device) for o in outs)
        return tensors[0] if len(tensors) == 1 else tensors

    def train(self, mode: bool = True) -> Predictor:
        # A deployed file has no training mode; evaluate() and predict() toggle it freely.
        return super().train(False)

    def extra_repr(self) -> str:
        return self.describe()


def dequantize(y: np.ndarray, quantization: tuple[float, int] | None) -> np.ndarray:
    """float32 of an output tensor: (q - zero_point) * scale when it is quantized."""
    if quantization is None or not quantization[0] or y.dtype.kind == "f":
        return y.astype(np.float32, copy=False)
    scale, zero = quantization
    return (y.astype(np.float32) - zero) * scale
