"""Anchor-to-ground-truth matching (TF's ``argmax_matcher`` with ``force_match_for_each_row``).

Each anchor takes the ground-truth box it overlaps most. IoU >= ``matched_threshold``: positive;
IoU < ``unmatched_threshold``: background; in between: ignored (no loss at all). Every ground-truth
box then claims its best anchor even below the threshold, so no object goes unmatched. Anchors that
lie mostly inside an "ignore" region (KITTI ``DontCare``) and are not positive are ignored too.
"""

from __future__ import annotations

import torch

from .boxes import box_ioa, box_iou, cxcywh_to_xyxy

IGNORE = -1  # label of anchors that contribute no loss
BACKGROUND = 0


def match_anchors(
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    anchors: torch.Tensor,
    *,
    matched_threshold: float = 0.5,
    unmatched_threshold: float = 0.5,
    ignore_boxes: torch.Tensor | None = None,
    ignore_ioa: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Assign a target to each anchor.

    Args:
        gt_boxes: (G, 4) xyxy in the anchors' units (normalised).
        gt_labels: (G,) class indices starting at 1 (0 is background).
        anchors: (A, 4) cx, cy, w, h.
        ignore_boxes: (K, 4) xyxy regions where unmatched anchors are ignored rather than negative.

    Returns:
        labels (A,) long: class index, 0 background, -1 ignore;
        boxes (A, 4): the matched ground-truth box of each anchor (meaningful where labels > 0).
    """
    if not 0 <= unmatched_threshold <= matched_threshold <= 1:
        raise ValueError(f"need 0 <= unmatched_threshold <= matched_threshold <= 1, got "
                         f"{unmatched_threshold}, {matched_threshold}")
    num_anchors = anchors.shape[0]
    labels = torch.zeros(num_anchors, dtype=torch.long, device=anchors.device)
    boxes = torch.zeros(num_anchors, 4, dtype=anchors.dtype, device=anchors.device)
    anchor_xyxy = cxcywh_to_xyxy(anchors)
    if gt_boxes.numel():
        iou = box_iou(gt_boxes.to(anchors.dtype), anchor_xyxy)  # (G, A)
        best_iou, best_gt = iou.max(dim=0)  # (A,)
        # Force match: each ground truth's best anchor goes to it (later boxes win ties, like TF).
        forced = iou.argmax(dim=1)  # (G,)
        best_gt[forced] = torch.arange(gt_boxes.shape[0], device=anchors.device)
        best_iou[forced] = 1.0
        labels = gt_labels.to(torch.long)[best_gt].clone()
        labels[best_iou < matched_threshold] = IGNORE
        labels[best_iou < unmatched_threshold] = BACKGROUND
        boxes = gt_boxes.to(anchors.dtype)[best_gt]
    if ignore_boxes is not None and ignore_boxes.numel():
        inside = box_ioa(anchor_xyxy, ignore_boxes.to(anchors.dtype)).max(dim=1).values >= ignore_ioa
        labels[inside & (labels == BACKGROUND)] = IGNORE
    return labels, boxes
