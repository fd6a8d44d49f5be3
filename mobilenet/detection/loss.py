"""MultiBox loss (Liu et al. 2016): smooth L1 on positive anchors + classification with hard negatives.

Classification is softmax cross-entropy over (background + classes) with 3:1 hard-negative mining
(the negatives with the highest loss, at most ``neg_pos_ratio`` per positive, per image), or
sigmoid focal loss (Lin et al. 2017, alpha 0.25, gamma 2) over all non-ignored anchors. Both terms
are normalised by the number of positives in the batch (at least 1), as SSD and TF do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .matching import BACKGROUND, IGNORE


@dataclass
class LossOutput:
    total: torch.Tensor
    box: torch.Tensor
    cls: torch.Tensor
    num_pos: int


def hard_negative_mask(cls_loss: torch.Tensor, labels: torch.Tensor, neg_pos_ratio: float) -> torch.Tensor:
    """(B, A) per-anchor loss and labels -> (B, A) bool: positives plus the hardest negatives."""
    pos = labels > 0
    neg = labels == BACKGROUND
    num_neg = (pos.sum(dim=1, keepdim=True) * neg_pos_ratio).clamp(min=1).long()  # (B, 1); >= 1 keeps empty images
    masked = cls_loss.detach().masked_fill(~neg, float("-inf"))
    rank = masked.argsort(dim=1, descending=True).argsort(dim=1)  # rank of each anchor by loss
    hard_neg = neg & (rank < num_neg)
    return pos | hard_neg


def sigmoid_focal_loss(logits: torch.Tensor, labels: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """(N, C+1) logits (column 0 unused: background is "all classes off"), (N,) labels -> (N,) loss."""
    target = F.one_hot(labels.clamp(min=0), logits.shape[-1]).to(logits.dtype)[:, 1:]
    x = logits[:, 1:]
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    a_t = alpha * target + (1 - alpha) * (1 - target)
    return (a_t * (1 - p_t) ** gamma * ce).sum(dim=-1)


def multibox_loss(
    box_pred: torch.Tensor,
    cls_logits: torch.Tensor,
    box_target: torch.Tensor,
    labels: torch.Tensor,
    *,
    neg_pos_ratio: float = 3.0,
    box_weight: float = 1.0,
    classification: str = "softmax",
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> LossOutput:
    """SSD loss.

    Args:
        box_pred, box_target: (B, A, 4) encoded offsets (predicted, and the matched boxes encoded).
        cls_logits: (B, A, C+1) with column 0 the background.
        labels: (B, A) long: 0 background, >0 class, -1 ignore (see ``match_anchors``).
        classification: "softmax" (cross-entropy, hard-negative mining) or "focal" (sigmoid focal loss).
    """
    if box_pred.shape != box_target.shape or box_pred.shape[:2] != labels.shape:
        raise ValueError(f"shape mismatch: box_pred {tuple(box_pred.shape)}, box_target {tuple(box_target.shape)}, "
                         f"labels {tuple(labels.shape)}")
    pos = labels > 0
    num_pos = int(pos.sum())
    norm = max(num_pos, 1)
    box_loss = F.smooth_l1_loss(box_pred[pos], box_target[pos], reduction="sum", beta=1.0) / norm
    num_classes = cls_logits.shape[-1]
    flat_logits, flat_labels = cls_logits.reshape(-1, num_classes), labels.reshape(-1)
    if classification == "softmax":
        ce = F.cross_entropy(flat_logits.float(), flat_labels.clamp(min=0), reduction="none").view_as(labels)
        keep = hard_negative_mask(ce, labels, neg_pos_ratio)
        cls_loss = ce[keep].sum() / norm
    elif classification == "focal":
        valid = flat_labels != IGNORE
        focal = sigmoid_focal_loss(flat_logits[valid].float(), flat_labels[valid], focal_alpha, focal_gamma)
        cls_loss = focal.sum() / norm
    else:
        raise ValueError(f"classification must be 'softmax' or 'focal', got {classification!r}")
    return LossOutput(total=box_weight * box_loss + cls_loss, box=box_loss.detach(), cls=cls_loss.detach(),
                      num_pos=num_pos)
