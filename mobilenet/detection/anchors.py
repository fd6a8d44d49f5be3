"""SSD default boxes ("anchors"), as the TF Object Detection API's ``multiple_grid_anchor_generator``.

For ``L`` feature maps the scales are spread linearly from ``min_scale`` to ``max_scale``
(``s_k = s_min + (s_max - s_min) k / (L - 1)``, then a final 1.0). Every map gets one box per aspect
ratio at scale ``s_k`` plus one square box at ``sqrt(s_k s_{k+1})``; the first map gets three boxes
(0.1 at ratio 1, ``s_0`` at ratios 2 and 1/2) when ``reduce_boxes_in_lowest_layer``. With the
defaults (0.2, 0.95, ratios 1, 2, 1/2, 3, 1/3) that is 3 boxes on the first map and 6 on the rest:
1917 anchors at 300x300, the layout of TF's ``ssd_mobilenet_v1`` and its ``detect.tflite``.

Anchors come out as normalised (cx, cy, w, h), ordered map by map, then row (y), column (x),
box: the order the box predictors' outputs are flattened in. For a non-square input the base size
is shrunk on the longer axis (TF's behaviour), so a ratio-1 anchor is square in pixels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class AnchorConfig:
    """Parameters of the anchor generator; saved with every detector's config."""

    min_scale: float = 0.2
    max_scale: float = 0.95
    aspect_ratios: tuple[float, ...] = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)
    interpolated_scale_aspect_ratio: float = 1.0
    reduce_boxes_in_lowest_layer: bool = True
    clip: bool = False  # TF's ssd_mobilenet_v1 does not clip; SSD (Liu et al.) does

    def __post_init__(self) -> None:
        if not 0 < self.min_scale <= self.max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {self.min_scale!r}, {self.max_scale!r}")
        ratios = tuple(float(r) for r in self.aspect_ratios)
        if not ratios or any(r <= 0 for r in ratios):
            raise ValueError(f"aspect_ratios must be positive numbers, got {self.aspect_ratios!r}")
        object.__setattr__(self, "aspect_ratios", ratios)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AnchorConfig:
        return cls(**{**d, "aspect_ratios": tuple(d.get("aspect_ratios", cls.aspect_ratios))})


def box_specs(cfg: AnchorConfig, num_layers: int) -> list[list[tuple[float, float]]]:
    """Per feature map, the (scale, aspect_ratio) of each anchor at one location."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if num_layers == 1:
        scales = [cfg.min_scale]
    else:
        scales = [cfg.min_scale + (cfg.max_scale - cfg.min_scale) * i / (num_layers - 1) for i in range(num_layers)]
    scales.append(1.0)
    specs = []
    for layer, (scale, scale_next) in enumerate(zip(scales[:-1], scales[1:], strict=True)):
        if layer == 0 and cfg.reduce_boxes_in_lowest_layer:
            specs.append([(0.1, 1.0), (scale, 2.0), (scale, 0.5)])
            continue
        layer_specs = [(scale, ar) for ar in cfg.aspect_ratios]
        if cfg.interpolated_scale_aspect_ratio > 0:
            layer_specs.append((math.sqrt(scale * scale_next), cfg.interpolated_scale_aspect_ratio))
        specs.append(layer_specs)
    return specs


def num_anchors_per_location(cfg: AnchorConfig, num_layers: int) -> list[int]:
    """How many anchors sit at each location of each feature map (the predictors' output multiple)."""
    return [len(s) for s in box_specs(cfg, num_layers)]


def generate_anchors(
    cfg: AnchorConfig,
    feature_sizes: list[tuple[int, int]],
    image_size: tuple[int, int],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(A, 4) normalised cx, cy, w, h anchors for feature maps of (height, width) ``feature_sizes``.

    ``image_size`` is (height, width) of the input; only its aspect matters (see module doc).
    """
    img_h, img_w = image_size
    short = min(img_h, img_w)
    base_h, base_w = short / img_h, short / img_w  # TF: square in pixels on non-square inputs
    out = []
    for (fh, fw), specs in zip(feature_sizes, box_specs(cfg, len(feature_sizes)), strict=True):
        scales = torch.tensor([s for s, _ in specs], dtype=torch.float64)
        ratios = torch.tensor([r for _, r in specs], dtype=torch.float64).sqrt()
        hs, ws = scales / ratios * base_h, scales * ratios * base_w  # (a,)
        ys = (torch.arange(fh, dtype=torch.float64) + 0.5) / fh  # centres on a 1/f grid, offset half a cell
        xs = (torch.arange(fw, dtype=torch.float64) + 0.5) / fw
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")  # (fh, fw)
        a = len(specs)
        layer = torch.stack((
            cx[..., None].expand(fh, fw, a), cy[..., None].expand(fh, fw, a),
            ws.expand(fh, fw, a), hs.expand(fh, fw, a),
        ), dim=-1)  # (fh, fw, a, 4): row, column, box: the predictors' flattening order
        out.append(layer.reshape(-1, 4))
    anchors = torch.cat(out)
    if cfg.clip:
        x1y1 = (anchors[:, :2] - anchors[:, 2:] / 2).clamp(0, 1)
        x2y2 = (anchors[:, :2] + anchors[:, 2:] / 2).clamp(0, 1)
        anchors = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), dim=1)
    return anchors.to(dtype=dtype, device=device)
