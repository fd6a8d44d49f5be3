"""Box conversions and IoU in plain torch.

Two layouts appear in this package: ``xyxy`` (x1, y1, x2, y2: corners, what datasets, NMS and
metrics use) and ``cxcywh`` (centre and size: what anchors and the box codec use). Coordinates are
whatever the caller passes (normalised [0, 1] inside the model, pixels outside); these functions
never assume one or the other.
"""

from __future__ import annotations

import torch


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) corners -> (..., 4) centre x, centre y, width, height."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) centre x, centre y, width, height -> (..., 4) corners."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) xyxy -> (...) area; degenerate boxes (x2 < x1) count as 0, not negative."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def box_intersection(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, 4), (M, 4) xyxy -> (N, M) intersection areas."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, 4), (M, 4) xyxy -> (N, M) intersection over union; 0 where the union is empty."""
    inter = box_intersection(a, b)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(inter.dtype).tiny), torch.zeros_like(inter))


def box_ioa(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, 4), (M, 4) xyxy -> (N, M) intersection over the area of ``a`` (how much of a lies in b)."""
    inter = box_intersection(a, b)
    area = box_area(a)[:, None]
    return torch.where(area > 0, inter / area.clamp(min=torch.finfo(inter.dtype).tiny), torch.zeros_like(inter))


def clip_boxes(boxes: torch.Tensor, width: float, height: float) -> torch.Tensor:
    """(..., 4) xyxy clipped to the rectangle [0, width] x [0, height]."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((x1.clamp(0, width), y1.clamp(0, height), x2.clamp(0, width), y2.clamp(0, height)), dim=-1)


def scale_boxes(boxes: torch.Tensor, sx: float, sy: float) -> torch.Tensor:
    """(..., 4) xyxy with x multiplied by ``sx`` and y by ``sy`` (normalised <-> pixels)."""
    return boxes * boxes.new_tensor([sx, sy, sx, sy])
