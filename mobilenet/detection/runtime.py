"""A deployed detector file, run in its own runtime, behind the SSD's own face: ``config``, ``detect``.

:mod:`mobilenet.runtimes` runs the file and returns its raw outputs; this module finishes them into
:class:`~mobilenet.detection.postprocess.Detections`, by what the file ends in:

* ``decoded (B, A, 4)`` and ``logits (B, A, C + 1)`` (our TF Lite, ExecuTorch, OpenVINO exports, and the network
  part of the ONNX export): the model's post-processing (:func:`select_detections`) in PyTorch;
* ``boxes`` and ``scores`` (an ONNX export without NMS): the same, from scores;
* ``detections (N, 7)`` (an ONNX export with NMS): already post-processed;
* ``TFLite_Detection_PostProcess``'s boxes, classes, scores and count (Google's ``detect.tflite``, our
  full-integer export): already post-processed.

So ``mobilenet detect eval|predict`` measure the exact file that is deployed. :func:`open_detector` opens our
SSD weights as the SSD and any other file in its runtime (``mobilenet.engine.detect.load_detector`` imports
Google's ``detect.tflite`` into our SSD instead, unless asked to run it in the interpreter: the importers sit
above this layer).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import runtimes
from ..weights import weights_info
from .postprocess import Detections, PostprocessConfig, class_scores, select_detections
from .ssd import SSD, SSDConfig

OUTPUT_KINDS = ("decoded", "scores", "detections", "tflite_postprocess")


def output_kind(predictor: runtimes.Predictor) -> str:
    """Which of ``OUTPUT_KINDS`` the file ends in (ValueError naming its outputs otherwise)."""
    names = predictor.metadata.get("outputs") or predictor.output_names
    if predictor.metadata.get("postprocess_op") or len(names) == 4 and predictor.runtime == "tflite":
        return "tflite_postprocess"
    if list(names) == ["detections"]:
        return "detections"
    if list(names) == ["boxes", "scores"]:
        return "scores"
    if len(names) == 2:
        return "decoded"
    raise ValueError(f"{predictor.path.name} ends in {', '.join(names)}: not a detector this package can read")


class RuntimeDetector(nn.Module):
    """A deployed detector (a :class:`~mobilenet.runtimes.Predictor`) with ``config``, ``detect`` and
    ``weights_info`` as an :class:`~mobilenet.detection.ssd.SSD` has them (see the module docstring)."""

    def __init__(self, predictor: runtimes.Predictor) -> None:
        super().__init__()
        if predictor.task != "detect":
            raise ValueError(f"{predictor.path.name} is a classifier, not a detector")
        self.predictor = predictor
        self.kind = output_kind(predictor)
        meta = predictor.metadata
        size = predictor.resolution
        cfg = SSDConfig.from_dict(meta["config"]) if meta.get("config") else None
        if cfg is None:  # Google's detect.tflite: the input's own normalisation, TF's post-processing in the file
            pre = predictor.preprocessing
            cfg = SSDConfig(num_classes=len(predictor.class_names or []) or 90, image_size=size,
                            pixel_mean=pre.mean, pixel_std=pre.std)
        from dataclasses import replace

        self.config = replace(cfg, image_size=size)
        names = predictor.class_names or [f"class_{k}" for k in range(self.config.num_classes)]
        self.weights_info = weights_info(predictor).replace(classes=list(names))
        self.eval()

    def describe(self) -> str:
        return self.predictor.describe()

    def forward(self, x: torch.Tensor) -> Any:
        return self.predictor(x)

    @torch.no_grad()
    def detect(self, x: torch.Tensor, cfg: PostprocessConfig | None = None) -> list[Detections]:
        """(B, 3, H, W) normalised images -> per-image detections with normalised xyxy boxes. ``cfg`` applies to
        files that end before NMS; a file with its own NMS keeps the settings it was exported with."""
        out = self.predictor(x)
        if self.kind == "decoded":
            boxes, logits = out
            pp = cfg or self.config.postprocess
            return select_detections(boxes, class_scores(logits, pp.score_fn), pp)
        if self.kind == "scores":
            boxes, scores = out
            return select_detections(boxes, scores, cfg or self.config.postprocess)
        if self.kind == "detections":
            rows = out if isinstance(out, torch.Tensor) else out[0]
            per_image = [rows[rows[:, 0] == b] for b in range(len(x))]
            return [Detections(boxes=r[:, 1:5], scores=r[:, 5], labels=r[:, 6].long()) for r in per_image]
        boxes, classes, scores, count = out  # TF: ymin, xmin, ymax, xmax; classes 0-based; count per image
        result = []
        for b in range(len(x)):
            n = int(count[b])
            result.append(Detections(boxes=boxes[b, :n][:, [1, 0, 3, 2]], scores=scores[b, :n],
                                     labels=classes[b, :n].long()))
        return result

    def train(self, mode: bool = True) -> RuntimeDetector:
        return super().train(False)


def open_detector(path: str | os.PathLike[str], device: Any = "cpu", *, runtime: str | None = None,
                  threads: int | None = None) -> nn.Module:
    """The detector in ``path``: an :class:`SSD` on ``device`` for our weights file, a :class:`RuntimeDetector`
    running any other file in ``runtime`` (default: by suffix) on the CPU, whatever ``device`` (its detections
    come back on the device of the images)."""
    from ..checkpoint import load

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"detector not found: {path}")
    if path.suffix.lower() == ".safetensors":
        model = load(path, map_location=device)
        if not isinstance(model, SSD):
            raise ValueError(f"{path} holds a {type(model).__name__}, not a detector")
        return model
    return RuntimeDetector(runtimes.load(path, runtime=runtime, threads=threads))
