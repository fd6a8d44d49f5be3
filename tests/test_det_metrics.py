"""Detection metrics against hand-computed values (VOC devkit rules, KITTI devkit rules)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mobilenet.detection.metrics import kitti_evaluate, voc_ap, voc_evaluate


def _ann(boxes, labels, difficult=None, ignore=None, kitti=None):
    n = len(boxes)
    return SimpleNamespace(boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                           labels=torch.tensor(labels, dtype=torch.long),
                           difficult=torch.tensor(difficult or [False] * n),
                           ignore_boxes=torch.tensor(ignore or [], dtype=torch.float32).reshape(-1, 4),
                           extra={"kitti": kitti or []}, width=1242, height=375)


def _det(rows):
    t = torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)
    return t[:, :4], t[:, 4], t[:, 5].long()


def test_voc_ap_hand_computed_with_difficult_and_duplicates():
    anns = [_ann([[0, 0, 9, 9], [20, 20, 29, 29]], [0, 0], [False, True]), _ann([[0, 0, 9, 9]], [0])]
    dets = [_det([[0, 0, 9, 9, 0.9, 0], [0, 0, 9, 9, 0.8, 0], [20, 20, 29, 29, 0.7, 0]]),
            _det([[50, 50, 59, 59, 0.6, 0], [0, 0, 9, 9, 0.5, 0]])]
    # TP, duplicate FP, difficult (ignored), FP, TP; 2 non-difficult objects
    # rec .5 .5 .5 1 / prec 1 .5 1/3 .5 -> all-point AP = .5 * 1 + .5 * .5
    assert voc_evaluate(dets, anns, 1)["ap"][0] == pytest.approx(0.75)
    # 11-point: recall >= 0 .. 0.5 -> precision 1 (6 points); 0.6 .. 1.0 -> 0.5 (5 points)
    assert voc_evaluate(dets, anns, 1, use_07_metric=True)["ap"][0] == pytest.approx(8.5 / 11)


def test_voc_inclusive_pixels_and_classes_without_ground_truth():
    # 10x10 inclusive boxes shifted by 5: devkit IoU = 50 / 150 = 1/3 < 0.5 -> FP
    anns = [_ann([[0, 0, 9, 9]], [0])]
    r = voc_evaluate([_det([[5, 0, 14, 9, 0.9, 0]])], anns, 2)
    assert r["ap"][0] == 0.0 and math.isnan(r["ap"][1]) and r["map"] == 0.0
    r = voc_evaluate([_det([[3, 0, 12, 9, 0.9, 0]])], anns, 2)  # IoU 70 / 130 > 0.5
    assert r["ap"][0] == 1.0
    with pytest.raises(ValueError, match="annotations"):
        voc_evaluate([], anns, 1)


def test_voc_ap_matches_the_devkit_envelope():
    rec = np.array([0.2, 0.4, 0.4, 0.8])
    prec = np.array([1.0, 0.5, 0.67, 0.5])
    # envelope: 1 up to .2, .67 up to .4, .5 up to .8, 0 after
    assert voc_ap(rec, prec) == pytest.approx(0.2 * 1 + 0.2 * 0.67 + 0.4 * 0.5)


def _car(box, occ=0, trunc=0.0, kind="Car"):
    return {"type": kind, "truncation": trunc, "occlusion": occ, "box": box}


def test_kitti_perfect_detections_score_100():
    anns, dets = [], []
    for i in range(80):
        box = [100.0, 100.0, 200.0, 160.0]  # 60 px tall: counts for easy, moderate and hard
        anns.append(_ann([box], [0], kitti=[_car(box)]))
        dets.append(_det([[*box, 0.5 + i / 200, 0]]))
    r = kitti_evaluate(dets, anns, ["Car", "Pedestrian", "Cyclist"])
    for d in ("easy", "moderate", "hard"):
        assert r["Car"][d]["ap_r40"] == pytest.approx(100.0) and r["Car"][d]["ap_r11"] == pytest.approx(100.0)
        assert r["Car"][d]["num_gt"] == 80
    assert math.isnan(r["Pedestrian"]["easy"]["ap_r40"])


def test_kitti_difficulty_iou_07_and_dontcare():
    tall, short = [100.0, 100.0, 200.0, 160.0], [300.0, 100.0, 340.0, 130.0]  # 60 px and 30 px
    anns, dets = [], []
    for _i in range(80):
        kitti = [_car(tall), _car(short, occ=1)]
        dontcare = [[500.0, 100.0, 600.0, 200.0]]
        anns.append(_ann([tall, short], [0, 0], kitti=kitti, ignore=dontcare))
        # tall found; a false positive fully inside DontCare (absorbed); short found with IoU 0.6 only (< 0.7)
        dets.append(_det([[*tall, 0.9, 0], [510, 110, 590, 190, 0.8, 0], [310, 100, 350, 130, 0.7, 0]]))
    r = kitti_evaluate(dets, anns, ["Car"], classes=["Car"])
    assert r["Car"]["easy"]["num_gt"] == 80  # the 30 px, occluded car is not "easy"
    assert r["Car"]["moderate"]["num_gt"] == 160
    # easy: the short car is ignored (and its detection with it); the DontCare FP is absorbed -> perfect
    assert r["Car"]["easy"]["ap_r40"] == pytest.approx(100.0)
    # moderate: the short car counts and its IoU-0.6 detection is a FP at IoU 0.7 -> recall stops at 0.5
    assert r["Car"]["moderate"]["ap_r40"] == pytest.approx(50.0, abs=2.6)
    # a pedestrian is matched at IoU > 0.5: the same IoU-0.6 box is a hit for that class
    ped = [_ann([short], [0], kitti=[_car(short, kind="Pedestrian")]) for _ in range(80)]
    pdet = [_det([[310, 100, 350, 130, 0.7, 0]]) for _ in range(80)]
    assert kitti_evaluate(pdet, ped, ["Pedestrian"], classes=["Pedestrian"])["Pedestrian"]["moderate"]["ap_r40"] \
        == pytest.approx(100.0)


def test_coco_map_when_pycocotools_is_installed():
    pytest.importorskip("pycocotools")
    from mobilenet.detection.metrics import coco_evaluate

    anns = [_ann([[10, 10, 60, 60]], [0])]
    r = coco_evaluate([_det([[10, 10, 60, 60, 0.9, 0]])], anns, ["thing"])
    assert r["map"] == pytest.approx(1.0)


def test_remap_labels_by_name_drops_unshared_classes():
    from mobilenet.detection.evaluate import remap_labels

    dets = [_det([[0, 0, 9, 9, 0.9, 0], [0, 0, 9, 9, 0.8, 1], [0, 0, 9, 9, 0.7, 2]])]
    (boxes, scores, labels), = remap_labels(dets, ["person", "kite", "dog"], ["cat", "dog", "person"])
    assert labels.tolist() == [2, 1] and scores.tolist() == pytest.approx([0.9, 0.7])
    with pytest.raises(ValueError, match="share no name"):
        remap_labels(dets, ["kite"], ["cat"])
    (_, _, labels), = remap_labels(dets, ["person", "tv", "couch"], ["sofa", "tvmonitor", "person"])
    assert labels.tolist() == [2, 1, 0]  # VOC spellings of COCO classes
