"""How images become model inputs at evaluation time; travels with every weights file.

Top-1 moves by up to 2 points with the resize method, so this is explicit data, not a default
hidden in a transform. Two crop conventions exist in the wild:

* ``"resize_crop"`` (PyTorch/timm): resize the shorter side to ``resolution / crop_fraction``,
  then take the central ``resolution`` x ``resolution`` crop.
* ``"crop_resize"`` (TF-slim/Keras "inception" eval): take the central ``crop_fraction`` of the
  image (both axes), then resize it to ``resolution`` x ``resolution``.

Normalisation is ``(pixel - mean) / std`` with pixels in [0, 255], channels in ``channel_order``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


@dataclass(frozen=True)
class Preprocessing:
    resolution: int = 224
    crop_fraction: float = 0.875
    crop_mode: Literal["resize_crop", "crop_resize"] = "resize_crop"
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: Literal["RGB", "BGR"] = "RGB"

    def __post_init__(self) -> None:
        if not 0 < self.crop_fraction <= 1:
            raise ValueError(f"crop_fraction must be in (0, 1], got {self.crop_fraction!r}")
        if self.crop_mode not in ("resize_crop", "crop_resize"):
            raise ValueError(f"crop_mode must be 'resize_crop' or 'crop_resize', got {self.crop_mode!r}")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation must be one of {sorted(_RESAMPLE)}, got {self.interpolation!r}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @classmethod
    def imagenet(cls, resolution: int = 224) -> Preprocessing:
        """PyTorch's ImageNet convention (mean/std normalisation, resize then crop)."""
        return cls(resolution=resolution)

    @classmethod
    def tf(cls, resolution: int = 224) -> Preprocessing:
        """TF-slim / Keras / TF Lite: central 87.5% crop, bilinear resize, pixels scaled to [-1, 1]."""
        return cls(resolution=resolution, crop_mode="crop_resize", mean=(127.5,) * 3, std=(127.5,) * 3)

    @classmethod
    def caffe(cls, resolution: int = 224) -> Preprocessing:
        """shicai/MobileNet-Caffe: BGR, mean (103.94, 116.78, 123.68), scale 0.017."""
        return cls(resolution=resolution, mean=(103.94, 116.78, 123.68), std=(1 / 0.017,) * 3, channel_order="BGR")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def crop_and_resize(self, image: Image.Image) -> Image.Image:
        """Deterministic geometric part: PIL image -> ``resolution`` x ``resolution`` RGB PIL image."""
        image = image.convert("RGB")
        resample = _RESAMPLE[self.interpolation]
        r = self.resolution
        if self.crop_mode == "crop_resize":
            w, h = image.size
            cw, ch = w * self.crop_fraction, h * self.crop_fraction
            left, top = (w - cw) / 2, (h - ch) / 2
            box = (round(left), round(top), round(left + cw), round(top + ch))
            return image.resize((r, r), resample, box=box)
        short = round(r / self.crop_fraction)
        w, h = image.size
        scale = short / min(w, h)
        nw, nh = max(r, round(w * scale)), max(r, round(h * scale))
        left, top = (nw - r) // 2, (nh - r) // 2
        if nw * nh > 16 * short * short:
            # A panorama-like aspect (a 20000x1 image would first become 5120000x256 pixels, 4 GB): resize only
            # the central crop's source region. Ordinary aspects keep the resize-then-crop below, bit for bit.
            sx, sy = w / nw, h / nh
            return image.resize((r, r), resample, box=(left * sx, top * sy, (left + r) * sx, (top + r) * sy))
        image = image.resize((nw, nh), resample)
        return image.crop((left, top, left + r, top + r))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """(..., 3, H, W) RGB pixels in [0, 255] (any float or uint8) -> normalised float32 input."""
        x = pixels.float()
        if self.channel_order == "BGR":
            x = x.flip(-3)
        mean = torch.tensor(self.mean, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(3, 1, 1)
        return (x - mean) / std

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> (3, resolution, resolution) float32 tensor ready for the model."""
        arr = np.asarray(self.crop_and_resize(image), dtype=np.uint8)
        return self.normalize(torch.from_numpy(arr.copy()).permute(2, 0, 1))
