"""A detector that takes RGB pixels: any detector file this project can load, behind one small interface.

``load_frame_detector(path)`` opens it as the detection commands do (``mobilenet.engine.detect.load_detector``):
``.safetensors`` (our SSD) and TF Lite's ``detect.tflite`` (imported into our SSD) run in PyTorch; any deployed
file (``.onnx`` from ``mobilenet detect export``, ``.pte``, OpenVINO ``.xml``, our ``.tflite`` exports) runs in
its own runtime (``mobilenet.detection.runtime``). Frames go in as ``(B, 3, h, w)`` float pixels in [0, 255] at
the detector's input size (or any size for a PyTorch SSD, whose anchors follow the input); detections come out
normalised, as ``SSD.detect``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..detection.postprocess import Detections


class FrameDetector:
    """Common face of a PyTorch SSD and an exported ONNX detector (see the module doc)."""

    def __init__(self, *, name: str, class_names: list[str], input_size: tuple[int, int],
                 mean: tuple[float, ...], std: tuple[float, ...], device: torch.device, flexible: bool,
                 run: Any) -> None:
        self.name = name
        self.class_names = class_names
        self.input_size = input_size  # (height, width)
        self.device = device
        self.flexible = flexible  # True: any input size works (anchors are made for it)
        self._mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self._run = run

    @torch.inference_mode()
    def detect(self, pixels: torch.Tensor) -> list[Detections]:
        """(B, 3, h, w) float RGB pixels in [0, 255] on ``device`` -> one ``Detections`` per image, boxes
        normalised to the input (xyxy in [0, 1])."""
        if not self.flexible and tuple(pixels.shape[-2:]) != self.input_size:
            raise ValueError(f"{self.name} takes {self.input_size[0]}x{self.input_size[1]} inputs, "
                             f"got {pixels.shape[-2]}x{pixels.shape[-1]}")
        return self._run((pixels - self._mean) / self._std)


def resize_pixels(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 3, H, W) float pixels -> (B, 3, h, w), bilinear with antialiasing (as PIL's resize, which the
    detectors' reference pipelines use), on the pixels' device."""
    if tuple(pixels.shape[-2:]) == tuple(size):
        return pixels
    return F.interpolate(pixels, size=size, mode="bilinear", antialias=True, align_corners=False).clamp_(0, 255)


def frames_to_tensor(rgb: Any, device: torch.device) -> torch.Tensor:
    """(H, W, 3) or (B, H, W, 3) uint8 numpy/torch RGB -> (B, 3, H, W) float32 on ``device``."""
    if isinstance(rgb, np.ndarray) and not rgb.flags.writeable:
        rgb = rgb.copy()  # PyAV's and PIL's arrays are read-only views; torch wants to own writable memory
    x = torch.as_tensor(rgb)
    if x.ndim == 3:
        x = x[None]
    return x.to(device, non_blocking=True).permute(0, 3, 1, 2).float()


def load_frame_detector(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> FrameDetector:
    """A :class:`FrameDetector` for a detector file (see the module doc)."""
    from ..engine.detect import load_detector

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"detector not found: {path}")
    return torch_detector(load_detector(path, device), device, name=path.name)


def torch_detector(model: Any, device: torch.device | str = "cpu", *, name: str = "ssd") -> FrameDetector:
    """Wrap an in-memory ``SSD`` (any input size: its anchors follow), or a deployed file's ``RuntimeDetector``
    (its fixed input size)."""
    from ..detection.predict import class_names_of
    from ..detection.runtime import RuntimeDetector

    device = torch.device(device)
    model = model.eval().to(device)
    cfg = model.config
    return FrameDetector(name=name, class_names=class_names_of(model), input_size=tuple(cfg.image_size),
                         mean=cfg.pixel_mean, std=cfg.pixel_std, device=device,
                         flexible=not isinstance(model, RuntimeDetector), run=model.detect)
