"""Raw SSD outputs -> final detections: decode, score threshold, top-k, NMS, max detections.

Two NMS modes:

* ``"per_class"``: every class above the threshold is a candidate and NMS runs per class (SSD,
  TF's ``use_regular_nms``).
* ``"class_agnostic"``: each anchor keeps only its best class, and one NMS runs across classes:
  TF Lite's default ``TFLite_Detection_PostProcess`` (``max_classes_per_detection=1``), needed to
  reproduce ``detect.tflite``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from .codec import BoxCoder
from .nms import batched_nms, nms


@dataclass(frozen=True)
class PostprocessConfig:
    score_threshold: float = 0.01
    iou_threshold: float = 0.45
    pre_nms_top_k: int = 400  # candidates per image (per class in per_class mode) before NMS
    max_detections: int = 100
    score_fn: str = "softmax"  # "softmax" (background column) or "sigmoid" (TF, focal loss)
    nms_mode: str = "per_class"  # or "class_agnostic"
    clip_boxes: bool = True  # clip decoded boxes to the image before NMS (TF Lite's op does not)

    def __post_init__(self) -> None:
        if self.score_fn not in ("softmax", "sigmoid"):
            raise ValueError(f"score_fn must be 'softmax' or 'sigmoid', got {self.score_fn!r}")
        if self.nms_mode not in ("per_class", "class_agnostic"):
            raise ValueError(f"nms_mode must be 'per_class' or 'class_agnostic', got {self.nms_mode!r}")
        if not 0 <= self.iou_threshold <= 1:
            raise ValueError(f"iou_threshold must be in [0, 1], got {self.iou_threshold!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PostprocessConfig:
        return cls(**d)


@dataclass
class Detections:
    """Detections of one image: boxes (N, 4) xyxy (normalised unless scaled), scores (N,), labels (N,) 0-based."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor

    def scaled(self, width: float, height: float) -> Detections:
        return Detections(self.boxes * self.boxes.new_tensor([width, height, width, height]), self.scores, self.labels)


def class_scores(cls_logits: torch.Tensor, score_fn: str) -> torch.Tensor:
    """(B, A, C+1) logits -> (B, A, C) per-class scores (the background column dropped)."""
    probs = cls_logits.softmax(-1) if score_fn == "softmax" else cls_logits.sigmoid()
    return probs[..., 1:]


def postprocess(
    box_pred: torch.Tensor, cls_logits: torch.Tensor, anchors: torch.Tensor, coder: BoxCoder, cfg: PostprocessConfig
) -> list[Detections]:
    """(B, A, 4) offsets, (B, A, C+1) logits, (A, 4) anchors -> one ``Detections`` per image (normalised)."""
    boxes_all = coder.decode(box_pred.float(), anchors.float())  # (B, A, 4)
    return select_detections(boxes_all, class_scores(cls_logits.float(), cfg.score_fn), cfg)


def select_detections(boxes_all: torch.Tensor, scores_all: torch.Tensor, cfg: PostprocessConfig) -> list[Detections]:
    """(B, A, 4) decoded normalised xyxy boxes, (B, A, C) class scores -> one ``Detections`` per image: clipping,
    thresholds, top-k and NMS as ``cfg`` says (what :func:`postprocess` does after decoding; a deployed file that
    ends in decoded boxes and logits, or boxes and scores, is finished here)."""
    if cfg.clip_boxes:
        boxes_all = boxes_all.clamp(0, 1)
    scores_all = scores_all.float()
    results = []
    for boxes, scores in zip(boxes_all, scores_all, strict=True):
        if cfg.nms_mode == "class_agnostic":
            best, labels = scores.max(dim=1)  # (A,)
            keep = (best > cfg.score_threshold).nonzero().squeeze(1)
            # stable: equal (uint8) scores keep anchor order, as TF Lite's post-processing op (std::stable_sort)
            keep = keep[best[keep].argsort(descending=True, stable=True)[: cfg.pre_nms_top_k]]
            kept = keep[nms(boxes[keep], best[keep], cfg.iou_threshold)][: cfg.max_detections]
            results.append(Detections(boxes[kept], best[kept], labels[kept]))
            continue
        anchor_idx, cls_idx = (scores > cfg.score_threshold).nonzero(as_tuple=True)
        cand_scores = scores[anchor_idx, cls_idx]
        # top-k per class: rank candidates within their class by score
        order = cand_scores.argsort(descending=True, stable=True)  # ties: lower anchor first
        anchor_idx, cls_idx, cand_scores = anchor_idx[order], cls_idx[order], cand_scores[order]
        counts = torch.zeros_like(cls_idx)
        if cls_idx.numel():
            sorted_cls, perm = cls_idx.sort(stable=True)
            first = torch.searchsorted(sorted_cls, sorted_cls)  # start of each class run
            rank = torch.arange(cls_idx.numel(), device=cls_idx.device) - first
            counts[perm] = rank
        sel = counts < cfg.pre_nms_top_k
        anchor_idx, cls_idx, cand_scores = anchor_idx[sel], cls_idx[sel], cand_scores[sel]
        kept = batched_nms(boxes[anchor_idx], cand_scores, cls_idx, cfg.iou_threshold)[: cfg.max_detections]
        results.append(Detections(boxes[anchor_idx[kept]], cand_scores[kept], cls_idx[kept]))
    return results
