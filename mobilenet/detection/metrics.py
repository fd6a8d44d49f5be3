"""Detection metrics, computed in Python exactly as the reference devkits define them.

* Pascal VOC (``VOCevaldet.m``): AP at IoU >= 0.5 per class; ``difficult`` objects are neither true
  nor false positives; a second detection of a found object is a false positive. IoU uses the
  devkit's inclusive pixels (``w = x2 - x1 + 1``). Two AP definitions: VOC2007's 11-point
  interpolation (``use_07_metric``) and VOC2010+'s area under the monotone precision envelope.
* KITTI object (``devkit_object/cpp/evaluate_object.cpp``): 2D AP per class for easy / moderate /
  hard (min box height 40/25/25 px, max occlusion 0/1/2, max truncation 0.15/0.3/0.5), IoU > 0.7 for
  Car and > 0.5 for Pedestrian and Cyclist, Van/Person_sitting as "neighbour" classes that are
  ignored, DontCare areas absorbing false positives; 41 recall thresholds, reported as the current
  benchmark's R40 AP and the original 11-point AP.
* COCO mAP@[.5:.95] through ``pycocotools`` or ``faster-coco-eval`` when one is installed.

Inputs are per image, aligned with the annotations: ``(boxes (N, 4) pixels xyxy, scores (N,),
labels (N,) 0-based)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

DetTuple = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# ---- VOC ----

def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False) -> float:
    """AP from the cumulative recall/precision arrays of one class (the devkit's ``VOCap`` / 11-point)."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = precision[recall >= t - 1e-12]
            ap += (p.max() if p.size else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    for i in range(mpre.size - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    i = np.nonzero(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


def _voc_overlaps(box: np.ndarray, gts: np.ndarray, inclusive: float) -> np.ndarray:
    iw = np.minimum(box[2], gts[:, 2]) - np.maximum(box[0], gts[:, 0]) + inclusive
    ih = np.minimum(box[3], gts[:, 3]) - np.maximum(box[1], gts[:, 1]) + inclusive
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    ua = ((box[2] - box[0] + inclusive) * (box[3] - box[1] + inclusive)
          + (gts[:, 2] - gts[:, 0] + inclusive) * (gts[:, 3] - gts[:, 1] + inclusive) - inter)
    return np.where(inter > 0, inter / ua, 0.0)


def voc_evaluate(
    detections: Sequence[DetTuple],
    annotations: Sequence[Any],
    num_classes: int,
    *,
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
    inclusive_pixels: bool = True,
) -> dict[str, Any]:
    """Per-class AP and mAP over classes that have ground truth. ``annotations`` need
    ``boxes``, ``labels``, ``difficult``. Returns {"ap": [per class, nan without ground truth], "map",
    "num_gt"}."""
    if len(detections) != len(annotations):
        raise ValueError(f"got detections for {len(detections)} images but {len(annotations)} annotations")
    inclusive = 1.0 if inclusive_pixels else 0.0
    aps, num_gt = [], []
    for c in range(num_classes):
        gt: list[tuple[np.ndarray, np.ndarray]] = []
        npos = 0
        for ann in annotations:
            m = _np(ann.labels) == c
            boxes, diff = _np(ann.boxes)[m].astype(np.float64), _np(ann.difficult)[m].astype(bool)
            gt.append((boxes, diff))
            npos += int((~diff).sum())
        dets = []  # (score, image index, box)
        for i, (boxes, scores, labels) in enumerate(detections):
            m = _np(labels) == c
            for b, s in zip(_np(boxes)[m].astype(np.float64), _np(scores)[m], strict=True):
                dets.append((float(s), i, b))
        dets.sort(key=lambda d: -d[0])  # stable, like MATLAB's sort
        tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
        found = [np.zeros(len(g[0]), dtype=bool) for g in gt]
        for d, (_, i, box) in enumerate(dets):
            gboxes, diff = gt[i]
            if gboxes.shape[0] == 0:
                fp[d] = 1
                continue
            ov = _voc_overlaps(box, gboxes, inclusive)
            j = int(ov.argmax())
            if ov[j] >= iou_threshold:
                if diff[j]:
                    continue  # difficult: neither TP nor FP
                if not found[i][j]:
                    tp[d], found[i][j] = 1, True
                else:
                    fp[d] = 1
            else:
                fp[d] = 1
        num_gt.append(npos)
        if npos == 0:
            aps.append(float("nan"))
            continue
        ctp, cfp = np.cumsum(tp), np.cumsum(fp)
        rec = ctp / npos
        prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
        aps.append(voc_ap(rec, prec, use_07_metric))
    valid = [a for a in aps if not math.isnan(a)]
    return {"ap": aps, "map": float(np.mean(valid)) if valid else float("nan"), "num_gt": num_gt}


# ---- KITTI ----

KITTI_MIN_HEIGHT = (40.0, 25.0, 25.0)
KITTI_MAX_OCCLUSION = (0, 1, 2)
KITTI_MAX_TRUNCATION = (0.15, 0.3, 0.5)
KITTI_DIFFICULTIES = ("easy", "moderate", "hard")
KITTI_MIN_OVERLAP = {"car": 0.7, "pedestrian": 0.5, "cyclist": 0.5}
KITTI_NEIGHBOURS = {"car": "van", "pedestrian": "person_sitting"}
N_SAMPLE_PTS = 41


def _overlaps(a: np.ndarray, b: np.ndarray, criterion: int) -> np.ndarray:
    """(N, 4), (M, 4) -> (N, M): IoU (criterion -1) or intersection over the area of a (criterion 0)."""
    if a.size == 0 or b.size == 0:
        return np.zeros((a.shape[0], b.shape[0]))
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None]
    area_b = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None, :]
    ua = area_a + area_b - inter if criterion == -1 else np.broadcast_to(area_a, inter.shape)
    return np.where(inter > 0, inter / np.maximum(ua, 1e-12), 0.0)


def _clean(gt_objs: list[dict[str, Any]], det_names: list[str], det_boxes: np.ndarray, cls: str, difficulty: int
           ) -> tuple[np.ndarray, np.ndarray, int]:
    """The devkit's ``cleanData``: ignored_gt / ignored_det in {0 use, 1 ignore, -1 other class}."""
    ignored_gt, n_valid = [], 0
    for o in gt_objs:
        name = o["type"].lower()
        valid = 1 if name == cls else 0 if KITTI_NEIGHBOURS.get(cls) == name else -1
        height = abs(o["box"][3] - o["box"][1])
        ignore = (o["occlusion"] > KITTI_MAX_OCCLUSION[difficulty] or o["truncation"] > KITTI_MAX_TRUNCATION[difficulty]
                  or height <= KITTI_MIN_HEIGHT[difficulty])
        if valid == 1 and not ignore:
            ignored_gt.append(0)
            n_valid += 1
        elif valid == 0 or (ignore and valid == 1):
            ignored_gt.append(1)
        else:
            ignored_gt.append(-1)
    ignored_det = []
    for name, box in zip(det_names, det_boxes, strict=True):
        height = abs(box[3] - box[1])
        if height < KITTI_MIN_HEIGHT[difficulty]:
            ignored_det.append(1)
        elif name.lower() == cls:
            ignored_det.append(0)
        else:
            ignored_det.append(-1)
    return np.array(ignored_gt, dtype=int), np.array(ignored_det, dtype=int), n_valid


def _statistics(overlaps: np.ndarray, scores: np.ndarray, ignored_gt: np.ndarray, ignored_det: np.ndarray,
                dc_overlaps: np.ndarray, min_overlap: float, thresh: float, compute_fp: bool
                ) -> tuple[int, int, int, list[float]]:
    """The devkit's ``computeStatistics`` for one image: (tp, fp, fn, scores of the true positives).

    ``overlaps`` is (n_det, n_gt) IoU; ``dc_overlaps`` (n_det, n_dontcare) intersection over det area.
    """
    no_det = -10000000.0
    n_det = scores.shape[0]
    assigned = np.zeros(n_det, dtype=bool)
    below = scores < thresh if compute_fp else np.zeros(n_det, dtype=bool)
    tp = fp = fn = 0
    tp_scores = []
    for i in range(len(ignored_gt)):
        if ignored_gt[i] == -1:
            continue
        det_idx, valid, max_ov, assigned_ignored = -1, no_det, 0.0, False
        for j in range(n_det):
            if ignored_det[j] == -1 or assigned[j] or below[j]:
                continue
            ov = overlaps[j, i]
            if not compute_fp and ov > min_overlap and scores[j] > valid:
                det_idx, valid = j, scores[j]
            elif compute_fp and ov > min_overlap and (ov > max_ov or assigned_ignored) and ignored_det[j] == 0:
                max_ov, det_idx, valid, assigned_ignored = ov, j, 1.0, False
            elif compute_fp and ov > min_overlap and valid == no_det and ignored_det[j] == 1:
                det_idx, valid, assigned_ignored = j, 1.0, True
        if valid == no_det and ignored_gt[i] == 0:
            fn += 1
        elif valid != no_det and (ignored_gt[i] == 1 or ignored_det[det_idx] == 1):
            assigned[det_idx] = True
        elif valid != no_det:
            tp += 1
            tp_scores.append(float(scores[det_idx]))
            assigned[det_idx] = True
    if compute_fp:
        fp = int(np.sum(~(assigned | (ignored_det == -1) | (ignored_det == 1) | below)))
        stuff = 0
        for k in range(dc_overlaps.shape[1]):
            for j in range(n_det):
                if assigned[j] or ignored_det[j] in (-1, 1) or below[j]:
                    continue
                if dc_overlaps[j, k] > min_overlap:
                    assigned[j] = True
                    stuff += 1
        fp -= stuff
    return tp, fp, fn, tp_scores


def _thresholds(scores: list[float], num_gt: int) -> list[float]:
    """The devkit's ``getThresholds``: scores at which recall passes each of 41 sample points."""
    scores = sorted(scores, reverse=True)
    out, current = [], 0.0
    for i, s in enumerate(scores):
        left = (i + 1) / num_gt
        right = (i + 2) / num_gt if i < len(scores) - 1 else left
        if right - current < current - left and i < len(scores) - 1:
            continue
        out.append(s)
        current += 1.0 / (N_SAMPLE_PTS - 1.0)
    return out


def kitti_evaluate(detections: Sequence[DetTuple], annotations: Sequence[Any], class_names: Sequence[str],
                   classes: Sequence[str] = ("Car", "Pedestrian", "Cyclist")) -> dict[str, Any]:
    """KITTI 2D AP (in %, as the benchmark prints) per class and difficulty.

    ``annotations`` need ``extra["kitti"]`` (every labelled object with type, truncation, occlusion,
    pixel box) and ``ignore_boxes`` (DontCare). Returns {class: {difficulty: {"ap_r40", "ap_r11",
    "num_gt"}}}; classes with no ground truth at a difficulty get nan.
    """
    if len(detections) != len(annotations):
        raise ValueError(f"got detections for {len(detections)} images but {len(annotations)} annotations")
    results: dict[str, Any] = {}
    per_image = []
    for (boxes, scores, labels), ann in zip(detections, annotations, strict=True):
        names = [class_names[int(k)] for k in _np(labels)]
        b = _np(boxes).astype(np.float64).reshape(-1, 4)
        gts = ann.extra.get("kitti", [])
        gt_boxes = np.array([o["box"] for o in gts], dtype=np.float64).reshape(-1, 4)
        dc = _np(ann.ignore_boxes).astype(np.float64).reshape(-1, 4)
        per_image.append((names, b, _np(scores).astype(np.float64), gts, _overlaps(b, gt_boxes, -1),
                          _overlaps(b, dc, 0)))
    for cls_name in classes:
        cls = cls_name.lower()
        min_overlap = KITTI_MIN_OVERLAP.get(cls, 0.5)
        results[cls_name] = {}
        for d, diff_name in enumerate(KITTI_DIFFICULTIES):
            cleaned, all_scores, num_gt = [], [], 0
            for names, b, s, gts, ov, dcov in per_image:
                ig_gt, ig_det, n_valid = _clean(gts, names, b, cls, d)
                num_gt += n_valid
                cleaned.append((ig_gt, ig_det))
                all_scores += _statistics(ov, s, ig_gt, ig_det, dcov, min_overlap, 0.0, False)[3]
            if num_gt == 0:
                results[cls_name][diff_name] = {"ap_r40": float("nan"), "ap_r11": float("nan"), "num_gt": 0}
                continue
            thresholds = _thresholds(all_scores, num_gt)
            precision = np.zeros(N_SAMPLE_PTS)
            for t, thr in enumerate(thresholds):
                tp = fp = fn = 0
                for (_, _, s, _, ov, dcov), (ig_gt, ig_det) in zip(per_image, cleaned, strict=True):
                    a, f, n, _ = _statistics(ov, s, ig_gt, ig_det, dcov, min_overlap, thr, True)
                    tp, fp, fn = tp + a, fp + f, fn + n
                precision[t] = tp / (tp + fp) if tp + fp > 0 else 0.0
            for t in range(len(thresholds)):
                precision[t] = precision[t:].max()
            results[cls_name][diff_name] = {
                "ap_r40": float(precision[1:].sum() / 40 * 100),
                "ap_r11": float(precision[0::4].sum() / 11 * 100),
                "num_gt": num_gt,
            }
    return results


# ---- COCO ----

def coco_evaluate(detections: Sequence[DetTuple], annotations: Sequence[Any], class_names: Sequence[str]
                  ) -> dict[str, float]:
    """COCO mAP@[.5:.95], AP50, AP75 via pycocotools (or faster-coco-eval's drop-in API)."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        try:
            from faster_coco_eval import COCO  # type: ignore[no-redef]
            from faster_coco_eval import COCOeval_faster as COCOeval
        except ImportError:
            raise ImportError("COCO mAP needs pycocotools or faster-coco-eval: pip install pycocotools") from None
    images, gts, dts = [], [], []
    for i, ((boxes, scores, labels), ann) in enumerate(zip(detections, annotations, strict=True)):
        images.append({"id": i, "width": ann.width, "height": ann.height})
        for b, lab in zip(_np(ann.boxes), _np(ann.labels), strict=True):
            gts.append({"id": len(gts) + 1, "image_id": i, "category_id": int(lab) + 1, "iscrowd": 0,
                        "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                        "area": float((b[2] - b[0]) * (b[3] - b[1]))})
        for b in _np(ann.ignore_boxes):
            gts.append({"id": len(gts) + 1, "image_id": i, "category_id": 1, "iscrowd": 1,
                        "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                        "area": float((b[2] - b[0]) * (b[3] - b[1]))})
        for b, s, lab in zip(_np(boxes), _np(scores), _np(labels), strict=True):
            dts.append({"image_id": i, "category_id": int(lab) + 1, "score": float(s),
                        "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": gts,
                  "categories": [{"id": k + 1, "name": n} for k, n in enumerate(class_names)]}
    gt.createIndex()
    if not dts:
        return {"map": 0.0, "ap50": 0.0, "ap75": 0.0}
    dt = gt.loadRes(dts)
    ev = COCOeval(gt, dt, "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return {"map": float(ev.stats[0]), "ap50": float(ev.stats[1]), "ap75": float(ev.stats[2])}
