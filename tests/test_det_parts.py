"""Unit tests of the small detection parts: boxes, anchors, codec, matching, loss, NMS, post-processing."""

from __future__ import annotations

import math

import pytest
import torch

from mobilenet.detection.anchors import AnchorConfig, box_specs, generate_anchors, num_anchors_per_location
from mobilenet.detection.boxes import box_area, box_ioa, box_iou, clip_boxes, cxcywh_to_xyxy, xyxy_to_cxcywh
from mobilenet.detection.codec import BoxCoder
from mobilenet.detection.loss import hard_negative_mask, multibox_loss
from mobilenet.detection.matching import IGNORE, match_anchors
from mobilenet.detection.nms import batched_nms, nms
from mobilenet.detection.postprocess import PostprocessConfig, postprocess

# ---- boxes ----


def test_box_conversions_round_trip_and_known_values():
    b = torch.tensor([[10.0, 20.0, 50.0, 40.0]])
    assert xyxy_to_cxcywh(b).tolist() == [[30.0, 30.0, 40.0, 20.0]]
    boxes = torch.rand(20, 4) * 100
    boxes[:, 2:] += boxes[:, :2]
    assert torch.allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(boxes)), boxes, atol=1e-5)


def test_iou_ioa_area_known_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0], [0.0, 0.0, 1.0, 1.0]])
    assert torch.allclose(box_iou(a, b), torch.tensor([[1 / 7, 1.0, 0.0, 0.25]]))
    assert torch.allclose(box_ioa(b, a)[:, 0], torch.tensor([0.25, 1.0, 0.0, 1.0]))
    assert box_area(torch.tensor([[3.0, 3.0, 1.0, 1.0]])).item() == 0  # degenerate counts as empty
    assert box_iou(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 0  # empty union: 0, not NaN
    assert clip_boxes(torch.tensor([[-5.0, 2.0, 120.0, 90.0]]), 100, 80).tolist() == [[0.0, 2.0, 100.0, 80.0]]


# ---- anchors ----


def test_anchor_layout_of_ssd_mobilenet_v1_at_300():
    cfg = AnchorConfig()
    assert num_anchors_per_location(cfg, 6) == [3, 6, 6, 6, 6, 6]
    sizes = [(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    anchors = generate_anchors(cfg, sizes, (300, 300))
    assert anchors.shape == (1917, 4)  # detect.tflite's anchor count
    # first location of the first map: centre half a cell in, boxes 0.1 at ratio 1 and 0.2 at ratios 2, 1/2
    cell = 1 / 19
    assert torch.allclose(anchors[0], torch.tensor([cell / 2, cell / 2, 0.1, 0.1]))
    assert torch.allclose(anchors[1], torch.tensor([cell / 2, cell / 2, 0.2 * math.sqrt(2), 0.2 / math.sqrt(2)]))
    # order: row, column, box -> the 4th anchor is one column to the right
    assert torch.allclose(anchors[3, :2], torch.tensor([1.5 * cell, 0.5 * cell]))
    # the last map: scale 0.95, interpolated sqrt(0.95 * 1.0)
    specs = box_specs(cfg, 6)
    assert specs[-1][0] == (0.95, 1.0) and specs[-1][-1] == (math.sqrt(0.95), 1.0)
    assert torch.allclose(anchors[-1], torch.tensor([0.5, 0.5, math.sqrt(0.95), math.sqrt(0.95)]))


def test_anchors_are_square_in_pixels_on_wide_inputs_and_clip():
    sizes = [(4, 12), (2, 6)]
    a = generate_anchors(AnchorConfig(), sizes, (100, 300))
    assert a.shape[0] == 4 * 12 * 3 + 2 * 6 * 6
    square = a[0]  # ratio 1, scale 0.1
    assert square[3] * 100 == pytest.approx(square[2] * 300)  # h * H == w * W
    clipped = generate_anchors(AnchorConfig(clip=True), sizes, (100, 300))
    xyxy = cxcywh_to_xyxy(clipped)
    assert xyxy.min() >= -1e-6 and xyxy.max() <= 1 + 1e-6


def test_anchor_config_rejects_bad_values():
    with pytest.raises(ValueError, match="min_scale"):
        AnchorConfig(min_scale=0.9, max_scale=0.2)
    with pytest.raises(ValueError, match="aspect_ratios"):
        AnchorConfig(aspect_ratios=(1.0, -2.0))


# ---- codec ----


def test_codec_round_trip_and_tf_scale_factors():
    coder = BoxCoder()
    anchors = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    box = torch.tensor([[0.45, 0.3, 0.65, 0.9]])  # centre (0.55, 0.6), size (0.2, 0.6)
    t = coder.encode(box, anchors)
    expected = torch.tensor([[(0.55 - 0.5) / 0.2 * 10, (0.6 - 0.5) / 0.4 * 10, 0.0, math.log(0.6 / 0.4) * 5]])
    assert torch.allclose(t, expected, atol=1e-5)
    assert torch.allclose(coder.decode(t, anchors), box, atol=1e-6)
    boxes = torch.rand(2, 50, 4) * 0.5
    boxes[..., 2:] += boxes[..., :2] + 0.01
    anchors = xyxy_to_cxcywh(torch.rand(50, 4) * 0.3 + torch.tensor([0, 0, 0.4, 0.4]))
    assert torch.allclose(coder.decode(coder.encode(boxes, anchors), anchors), boxes, atol=1e-5)


def test_codec_decode_does_not_overflow():
    out = BoxCoder().decode(torch.full((1, 4), 1e4), torch.tensor([[0.5, 0.5, 0.1, 0.1]]))
    assert torch.isfinite(out).all()


# ---- matching ----


def _anchors_xyxy(rows):
    return xyxy_to_cxcywh(torch.tensor(rows, dtype=torch.float32))


def test_matching_thresholds_forced_match_and_ignore_band():
    anchors = _anchors_xyxy([
        [0.0, 0.0, 0.4, 0.4],  # IoU 1 with gt 0
        [0.0, 0.0, 0.4, 0.3],  # IoU 0.75 -> positive
        [0.0, 0.0, 0.4, 0.16],  # IoU 0.4 -> ignore band (0.3, 0.5)
        [0.6, 0.6, 1.0, 1.0],  # far away -> background
        [0.5, 0.0, 0.9, 0.2],  # gt 1's best anchor although IoU < 0.5 -> forced positive
    ])
    gt = torch.tensor([[0.0, 0.0, 0.4, 0.4], [0.5, 0.0, 0.7, 0.6]])
    labels, boxes = match_anchors(gt, torch.tensor([1, 2]), anchors, matched_threshold=0.5, unmatched_threshold=0.3)
    assert labels.tolist() == [1, 1, IGNORE, 0, 2]
    assert torch.equal(boxes[4], gt[1])


def test_matching_without_ground_truth_and_with_dontcare_regions():
    anchors = _anchors_xyxy([[0.0, 0.0, 0.2, 0.2], [0.5, 0.5, 0.6, 0.6]])
    labels, _ = match_anchors(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), anchors,
                              ignore_boxes=torch.tensor([[0.45, 0.45, 0.7, 0.7]]))
    assert labels.tolist() == [0, IGNORE]  # the anchor inside the DontCare region is not a negative
    with pytest.raises(ValueError, match="unmatched_threshold"):
        match_anchors(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), anchors, matched_threshold=0.3,
                      unmatched_threshold=0.5)


# ---- loss ----


def test_hard_negative_mining_keeps_three_negatives_per_positive():
    labels = torch.tensor([[1, 0, 0, 0, 0, 0, 0, IGNORE]])
    loss = torch.tensor([[0.1, 5.0, 0.2, 4.0, 0.3, 3.0, 0.4, 9.0]])
    keep = hard_negative_mask(loss, labels, 3.0)
    assert keep.tolist() == [[True, True, False, True, False, True, False, False]]  # ignored never kept


def test_multibox_loss_is_small_for_perfect_predictions_and_ignores_ignored():
    labels = torch.tensor([[2, 0, 0, IGNORE]])
    target = torch.randn(1, 4, 4)
    logits = torch.full((1, 4, 3), -20.0)
    logits[0, 0, 2] = logits[0, 1, 0] = logits[0, 2, 0] = 20.0
    logits[0, 3, 1] = 20.0  # confidently wrong, but ignored
    out = multibox_loss(target.clone(), logits, target, labels)
    assert out.total.item() < 1e-6 and out.num_pos == 1
    wrong = multibox_loss(target + 1, logits, target, labels)
    assert wrong.box.item() == pytest.approx(4 * 0.5)  # smooth L1 of 1 per coordinate, 4 coordinates, 1 positive
    focal = multibox_loss(target.clone(), logits, target, labels, classification="focal")
    assert focal.total.item() < 1e-6
    with pytest.raises(ValueError, match="classification"):
        multibox_loss(target, logits, target, labels, classification="hinge")


def test_multibox_loss_gradients_are_finite_on_empty_images():
    box = torch.randn(2, 10, 4, requires_grad=True)
    logits = torch.randn(2, 10, 4, requires_grad=True)
    out = multibox_loss(box, logits, torch.zeros(2, 10, 4), torch.zeros(2, 10, dtype=torch.long))
    out.total.backward()
    assert out.num_pos == 0 and torch.isfinite(out.total) and torch.isfinite(logits.grad).all()


# ---- NMS ----


def _greedy_reference(boxes, scores, thr):
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep = []
    for i in order:
        if all(box_iou(boxes[i:i + 1], boxes[j:j + 1]).item() <= thr for j in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_equals_greedy_reference(seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(120, 2, generator=g) * 80
    boxes = torch.cat((xy, xy + 10 + torch.rand(120, 2, generator=g) * 30), dim=1)
    scores = torch.rand(120, generator=g)
    assert nms(boxes, scores, 0.5).tolist() == _greedy_reference(boxes, scores, 0.5)


def test_batched_nms_never_suppresses_across_classes():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, 0.5).tolist() == [0]
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0


# ---- post-processing ----


def test_postprocess_threshold_topk_and_modes():
    anchors = xyxy_to_cxcywh(torch.tensor([[0.1, 0.1, 0.3, 0.3], [0.11, 0.1, 0.31, 0.3], [0.6, 0.6, 0.9, 0.9]]))
    box_pred = torch.zeros(1, 3, 4)  # boxes = anchors
    logits = torch.tensor([[[0.0, 5.0, 4.0], [0.0, 4.0, 5.0], [5.0, 0.0, 0.0]]])  # softmax: background, a, b
    coder = BoxCoder()
    per_class = postprocess(box_pred, logits, anchors, coder, PostprocessConfig(score_threshold=0.3))[0]
    # anchors 0 and 1 overlap (IoU ~0.9) but carry different classes -> both kept per class
    assert sorted(per_class.labels.tolist()) == [0, 1]
    agnostic = postprocess(box_pred, logits, anchors, coder,
                           PostprocessConfig(score_threshold=0.3, nms_mode="class_agnostic"))[0]
    assert agnostic.labels.tolist() == [0] or agnostic.labels.tolist() == [1]
    capped = postprocess(box_pred, logits, anchors, coder, PostprocessConfig(score_threshold=0.01, max_detections=2))[0]
    assert len(capped.scores) == 2 and capped.scores[0] >= capped.scores[1]
    assert torch.allclose(per_class.scaled(200, 100).boxes[:, 2], per_class.boxes[:, 2] * 200)
    with pytest.raises(ValueError, match="nms_mode"):
        PostprocessConfig(nms_mode="soft")
