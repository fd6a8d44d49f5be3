"""Training augmentation that moves the boxes with the pixels (SSD, Liu et al. 2016, Sec. 2.2).

Each step maps (image (3, H, W) float pixels 0..255, boxes (N, 4) pixel xyxy, labels (N,),
ignore (K, 4)) to the same; boxes that leave the image are clipped, and dropped once nothing is
left. The transforms at the end (``TrainTransform``/``EvalTransform``) turn a dataset item
(PIL image, Annotation) into (normalised input, target with boxes in [0, 1]).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .boxes import box_area, box_iou, clip_boxes

MIN_BOX_SIZE = 1.0  # pixels; smaller boxes after cropping or clipping are dropped


@dataclass
class Sample:
    image: torch.Tensor  # (3, H, W) float32 RGB pixels in [0, 255]
    boxes: torch.Tensor  # (N, 4) pixel xyxy
    labels: torch.Tensor  # (N,)
    ignore: torch.Tensor  # (K, 4) pixel xyxy regions with no loss (DontCare, crowd)

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[-1], self.image.shape[-2]  # (width, height)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL -> (3, H, W) float32 RGB pixels in [0, 255]."""
    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float()


def _keep_valid(s: Sample) -> Sample:
    w, h = s.size
    boxes = clip_boxes(s.boxes, w, h)
    ok = ((boxes[:, 2] - boxes[:, 0]) >= MIN_BOX_SIZE) & ((boxes[:, 3] - boxes[:, 1]) >= MIN_BOX_SIZE)
    ign = clip_boxes(s.ignore, w, h)
    ign = ign[box_area(ign) > 0]
    return Sample(s.image, boxes[ok], s.labels[ok], ign)


def photometric_distort(s: Sample, rng: random.Random) -> Sample:
    """Random brightness (+-32), contrast and saturation (x0.5..1.5) and hue (+-18 deg), each with p=0.5."""
    x = s.image
    if rng.random() < 0.5:
        x = x + rng.uniform(-32, 32)
    if rng.random() < 0.5:
        x = (x - x.mean()) * rng.uniform(0.5, 1.5) + x.mean()
    if rng.random() < 0.5:
        gray = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
        x = gray + (x - gray) * rng.uniform(0.5, 1.5)
    if rng.random() < 0.5:
        # hue rotation in YIQ space: rotate the chroma plane (I, Q) by theta
        theta = np.deg2rad(rng.uniform(-18, 18))
        to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
        c, sn = float(np.cos(theta)), float(np.sin(theta))
        rot = torch.tensor([[1.0, 0, 0], [0, c, -sn], [0, sn, c]])
        m = torch.linalg.inv(to_yiq) @ rot @ to_yiq
        x = torch.einsum("ij,jhw->ihw", m, x)
    return Sample(x.clamp(0, 255), s.boxes, s.labels, s.ignore)


def expand(s: Sample, rng: random.Random, max_ratio: float = 4.0, fill: tuple[float, ...] = (127.5,) * 3) -> Sample:
    """Zoom out: put the image at a random place on a canvas up to ``max_ratio`` times larger (small objects)."""
    ratio = rng.uniform(1, max_ratio)
    w, h = s.size
    nw, nh = int(w * ratio), int(h * ratio)
    left, top = rng.randint(0, nw - w), rng.randint(0, nh - h)
    canvas = torch.tensor(fill, dtype=s.image.dtype).view(3, 1, 1).repeat(1, nh, nw)
    canvas[:, top:top + h, left:left + w] = s.image
    shift = s.boxes.new_tensor([left, top, left, top])
    return Sample(canvas, s.boxes + shift, s.labels, s.ignore + shift)


CROP_MIN_IOUS = (None, 0.1, 0.3, 0.5, 0.7, 0.9, 0.0)  # None: keep the whole image


def iou_crop(s: Sample, rng: random.Random, min_scale: float = 0.3, max_trials: int = 50) -> Sample:
    """SSD's random crop: a patch whose IoU with some object is >= a randomly chosen minimum.

    Objects whose centre falls outside the patch are dropped; the rest are clipped to it.
    """
    w, h = s.size
    while True:
        min_iou = rng.choice(CROP_MIN_IOUS)
        if min_iou is None or s.boxes.shape[0] == 0:
            return s
        for _ in range(max_trials):
            cw, ch = int(rng.uniform(min_scale, 1) * w), int(rng.uniform(min_scale, 1) * h)
            if cw < 1 or ch < 1 or not 0.5 <= cw / ch <= 2:
                continue
            left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
            patch = s.boxes.new_tensor([[left, top, left + cw, top + ch]])
            if box_iou(s.boxes, patch).max() < min_iou:
                continue
            centres = (s.boxes[:, :2] + s.boxes[:, 2:]) / 2
            inside = ((centres[:, 0] > left) & (centres[:, 0] < left + cw)
                      & (centres[:, 1] > top) & (centres[:, 1] < top + ch))
            if not inside.any():
                continue
            shift = s.boxes.new_tensor([left, top, left, top])
            out = Sample(s.image[:, top:top + ch, left:left + cw], s.boxes[inside] - shift, s.labels[inside],
                         s.ignore - shift)
            return _keep_valid(out)


def hflip(s: Sample) -> Sample:
    """Mirror left-right; x1' = W - x2, x2' = W - x1."""
    w, _ = s.size

    def flip(b: torch.Tensor) -> torch.Tensor:
        return torch.stack((w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]), dim=1)

    return Sample(s.image.flip(-1), flip(s.boxes), s.labels, flip(s.ignore))


def resize(s: Sample, size: tuple[int, int]) -> Sample:
    """Resize to (height, width), boxes scaled with it (aspect ratio not kept, as SSD does)."""
    w, h = s.size
    nh, nw = size
    img = F.interpolate(s.image[None], size=(nh, nw), mode="bilinear", align_corners=False,
                        antialias=nh < h or nw < w)[0]
    scale = s.boxes.new_tensor([nw / w, nh / h, nw / w, nh / h])
    return Sample(img, s.boxes * scale, s.labels, s.ignore * scale)


def _target(s: Sample, ann: Any) -> dict[str, Any]:
    w, h = s.size
    norm = s.boxes.new_tensor([w, h, w, h])
    return {"boxes": s.boxes / norm, "labels": s.labels, "ignore": s.ignore / norm,
            "image_id": ann.image_id, "orig_size": (ann.width, ann.height)}


def normalize(image: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(3, H, W) pixels -> (pixels - mean) / std."""
    return (image - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


class TrainTransform:
    """(PIL image, Annotation) -> (normalised (3, H, W), target) with the full SSD augmentation.

    ``seed``: a private RNG; None draws from Python's global RNG, which the training engine seeds per
    (seed, epoch, sample), so augmentation is reproducible and a resumed run sees the same samples.
    """

    def __init__(self, image_size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...], *,
                 photometric: bool = True, expand_ratio: float = 4.0, crop: bool = True, flip: bool = True,
                 seed: int | None = None) -> None:
        self.image_size, self.mean, self.std = tuple(image_size), mean, std
        self.photometric, self.expand_ratio, self.crop, self.flip = photometric, expand_ratio, crop, flip
        self.rng: Any = random if seed is None else random.Random(seed)

    def __call__(self, image: Image.Image, ann: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        s = Sample(pil_to_tensor(image), ann.boxes.clone(), ann.labels.clone(), ann.ignore_boxes.clone())
        if self.photometric:
            s = photometric_distort(s, self.rng)
        if self.expand_ratio > 1 and self.rng.random() < 0.5:
            s = expand(s, self.rng, self.expand_ratio, fill=self.mean)
        if self.crop:
            s = iou_crop(s, self.rng)
        if self.flip and self.rng.random() < 0.5:
            s = hflip(s)
        s = _keep_valid(resize(s, self.image_size))
        return normalize(s.image, self.mean, self.std), _target(s, ann)


def resize_input(image: Image.Image, image_size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...]
                 ) -> torch.Tensor:
    """The detector's input for an image: RGB, Pillow's bilinear resize to ``image_size`` (H, W; aspect not kept,
    as SSD), then ``(pixels - mean) / std``: (3, H, W) float32. Evaluation and prediction both use it, so
    ``detect eval --weights`` and scoring the JSON of ``detect predict`` see the same pixels."""
    h, w = image_size
    return normalize(pil_to_tensor(image.convert("RGB").resize((w, h), Image.BILINEAR)), mean, std)


class EvalTransform:
    """(PIL image, Annotation) -> (normalised (3, H, W) resized input (:func:`resize_input`), target), no randomness."""

    def __init__(self, image_size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.image_size, self.mean, self.std = tuple(image_size), mean, std

    def __call__(self, image: Image.Image, ann: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        h, w = self.image_size
        sx, sy = w / image.width, h / image.height
        scale = torch.tensor([sx, sy, sx, sy])
        x = resize_input(image, self.image_size, self.mean, self.std)
        return x, _target(Sample(x, ann.boxes * scale, ann.labels.clone(), ann.ignore_boxes * scale), ann)


def collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Stack images (all the same size after resizing); targets stay a list (box counts differ)."""
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]
