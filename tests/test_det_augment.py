"""Augmentation moves boxes with the pixels: checked by painting a box and finding it after each step."""

from __future__ import annotations

import random

import torch
from PIL import Image

from mobilenet.detection.augment import (
    EvalTransform,
    Sample,
    TrainTransform,
    expand,
    hflip,
    iou_crop,
    photometric_distort,
    resize,
)
from mobilenet.detection.datasets import Annotation


def _painted(w=80, h=60, box=(10, 20, 30, 50)):
    img = torch.zeros(3, h, w)
    x1, y1, x2, y2 = box
    img[:, y1:y2, x1:x2] = 255.0
    return Sample(img, torch.tensor([list(map(float, box))]), torch.tensor([0]), torch.zeros(0, 4))


def _white_bbox(img):
    ys, xs = torch.nonzero(img[0] > 127, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_flip_expand_resize_move_boxes_with_pixels():
    s = hflip(_painted())
    assert s.boxes[0].tolist() == _white_bbox(s.image) == [50, 20, 70, 50]
    e = expand(_painted(), random.Random(0), max_ratio=3.0, fill=(0.0, 0.0, 0.0))
    assert e.boxes[0].tolist() == _white_bbox(e.image)
    r = resize(_painted(), (120, 40))  # 2x taller, half as wide
    assert r.boxes[0].tolist() == [5.0, 40.0, 15.0, 100.0]
    assert abs(_white_bbox(r.image)[1] - 40) <= 1 and abs(_white_bbox(r.image)[3] - 100) <= 1


def test_iou_crop_keeps_objects_inside_the_patch():
    rng = random.Random(3)
    for _ in range(30):
        s = iou_crop(_painted(), rng)
        w, h = s.size
        if s.boxes.numel():
            b = s.boxes[0]
            assert 0 <= b[0] < b[2] <= w and 0 <= b[1] < b[3] <= h
            x1, y1, x2, y2 = (int(v) for v in b.tolist())
            assert s.image[0, y1:y2, x1:x2].mean() > 250  # the box still covers white pixels


def test_photometric_stays_in_pixel_range_and_keeps_boxes():
    s = photometric_distort(_painted(), random.Random(1))
    assert s.image.min() >= 0 and s.image.max() <= 255 and s.boxes.tolist() == [[10, 20, 30, 50]]


def test_transforms_give_normalised_boxes(tmp_path):
    img = Image.new("RGB", (80, 60))
    ann = Annotation("x", tmp_path / "x.png", 80, 60, torch.tensor([[8.0, 6.0, 40.0, 30.0]]), torch.tensor([1]),
                     torch.tensor([False]), torch.tensor([[0.0, 0.0, 4.0, 4.0]]))
    x, t = EvalTransform((32, 48), (127.5,) * 3, (127.5,) * 3)(img, ann)
    assert x.shape == (3, 32, 48)
    assert torch.allclose(t["boxes"], torch.tensor([[0.1, 0.1, 0.5, 0.5]])) and t["orig_size"] == (80, 60)
    for seed in range(5):
        x, t = TrainTransform((32, 32), (127.5,) * 3, (127.5,) * 3, seed=seed)(img, ann)
        assert x.shape == (3, 32, 32) and (t["boxes"] >= 0).all() and (t["boxes"] <= 1).all()
        assert len(t["labels"]) == len(t["boxes"])
