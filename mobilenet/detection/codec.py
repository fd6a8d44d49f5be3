"""The SSD / Faster R-CNN box codec: boxes <-> offsets relative to anchors.

``t_x = (x - x_a) / w_a * sx``, ``t_y = (y - y_a) / h_a * sy``, ``t_w = log(w / w_a) * sw``,
``t_h = log(h / h_a) * sh``. TF's ``faster_rcnn_box_coder`` and ``TFLite_Detection_PostProcess``
use scale factors (10, 10, 5, 5); Caffe SSD writes the same thing as variances (0.1, 0.1, 0.2, 0.2).
Offsets are ordered (t_x, t_y, t_w, t_h); TF orders them (t_y, t_x, t_h, t_w), which the TF importer
permutes once at load time.
"""

from __future__ import annotations

import math

import torch

from .boxes import cxcywh_to_xyxy, xyxy_to_cxcywh

TF_SCALE_FACTORS = (10.0, 10.0, 5.0, 5.0)
# exp() of a larger t_w/t_h overflows float16 and makes absurd boxes; torchvision clamps at log(1000/16).
MAX_LOG_SCALE = math.log(1000.0 / 16)


class BoxCoder:
    """Encode xyxy boxes against (cx, cy, w, h) anchors and decode offsets back to xyxy boxes."""

    def __init__(self, scale_factors: tuple[float, float, float, float] = TF_SCALE_FACTORS) -> None:
        if len(scale_factors) != 4 or any(s <= 0 for s in scale_factors):
            raise ValueError(f"scale_factors must be 4 positive numbers, got {scale_factors!r}")
        self.scale_factors = tuple(float(s) for s in scale_factors)

    def encode(self, boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """(..., A, 4) xyxy boxes, (A, 4) cxcywh anchors -> (..., A, 4) offsets (t_x, t_y, t_w, t_h)."""
        sx, sy, sw, sh = self.scale_factors
        b = xyxy_to_cxcywh(boxes)
        eps = 1e-8  # a degenerate (zero-size) box must not give log(0)
        return torch.stack((
            (b[..., 0] - anchors[:, 0]) / anchors[:, 2] * sx,
            (b[..., 1] - anchors[:, 1]) / anchors[:, 3] * sy,
            torch.log(b[..., 2].clamp(min=eps) / anchors[:, 2]) * sw,
            torch.log(b[..., 3].clamp(min=eps) / anchors[:, 3]) * sh,
        ), dim=-1)

    def decode(self, offsets: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """(..., A, 4) offsets, (A, 4) cxcywh anchors -> (..., A, 4) xyxy boxes (same units as anchors)."""
        sx, sy, sw, sh = self.scale_factors
        cx = offsets[..., 0] / sx * anchors[:, 2] + anchors[:, 0]
        cy = offsets[..., 1] / sy * anchors[:, 3] + anchors[:, 1]
        w = torch.exp((offsets[..., 2] / sw).clamp(max=MAX_LOG_SCALE)) * anchors[:, 2]
        h = torch.exp((offsets[..., 3] / sh).clamp(max=MAX_LOG_SCALE)) * anchors[:, 3]
        return cxcywh_to_xyxy(torch.stack((cx, cy, w, h), dim=-1))
