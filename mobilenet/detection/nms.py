"""Greedy non-maximum suppression in plain torch (no torchvision), and its per-class form.

Greedy NMS: visit boxes by decreasing score; keep a box unless a higher-scoring *kept* box
overlaps it with IoU > ``iou_threshold``. Written as a fixed point: ``keep[j] = not any(keep[i] and
iou[i, j] > t for i < j)``. Each vectorised sweep settles at least one more box in score order, and
the equation has exactly one solution (induction on j), so iterating to a fixed point gives exactly
the greedy result, usually in a handful of (N, N) sweeps instead of N Python steps.
"""

from __future__ import annotations

import torch

from .boxes import box_iou


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """(N, 4) xyxy, (N,) scores -> indices of kept boxes, highest score first."""
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = scores.argsort(descending=True, stable=True)
    b = boxes[order]
    # (N, N): True where box i (higher score) would suppress box j (lower score)
    suppresses = (box_iou(b, b) > iou_threshold).triu(diagonal=1)
    keep = torch.ones(b.shape[0], dtype=torch.bool, device=boxes.device)
    for _ in range(b.shape[0]):
        new_keep = ~(suppresses & keep[:, None]).any(dim=0)
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return order[keep]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS within each class independently: (N, 4), (N,), (N,) -> kept indices, highest score first.

    One NMS per class present, so memory is the largest class's (n, n) IoU matrix, not (N, N).
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    kept = []
    for c in classes.unique():
        idx = (classes == c).nonzero().squeeze(1)
        kept.append(idx[nms(boxes[idx], scores[idx], iou_threshold)])
    keep = torch.cat(kept)
    return keep[scores[keep].argsort(descending=True, stable=True)]
