"""Temporal detection: the full detector on key frames, crops of the changed regions in between.

Each frame is compared with the one before it, on the detector's device:

1. grey-level difference, thresholded (``diff_threshold``), counted per ``cell`` x ``cell`` block: a cell
   changed when at least ``cell_fraction`` of its pixels did (isolated noisy pixels never reach it);
2. morphology on the cell grid: a closing (dilate, then erode) joins the pieces of one moving object,
   then one more dilation gives the region a margin;
3. connected components by label propagation (each cell takes the largest label among its changed
   8-neighbours until nothing moves), then each component's bounding box.

The boxes are widened to take in the tracked detections they touch (so a crop holds the whole object that
moved, not only its moving edge), merged where they overlap, and cut out of the frame as crops of the frame's
aspect ratio, resized to ``crop_size`` and run through the detector in one batch. Tracked detections outside
every crop are kept as they were (static regions); those inside a crop are replaced by what the crop found.

A full frame is detected instead when it is a key frame (every ``key_interval`` frames), when the changed
area passes ``max_changed`` of the frame (camera motion, a cut), when the mean brightness jumps by more than
``max_brightness_shift`` grey levels (lights switched, auto-exposure), when there are more than
``max_crops`` regions, or when the crops would cost about as much as the full frame. That last case is a
large object moving (someone walking close to the camera: a crop of the frame's aspect around them is the
frame): when all the change touches tracked objects, their boxes are kept for up to ``hold_frames`` frames
before a full frame detects them again (at 10 frames/s a walking person's box moves a small part of its size
per frame). Each frame's record says which (``mode``: ``key``, ``changed``, ``brightness``, ``crops``,
``held`` or ``static``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..detection.boxes import box_area, box_intersection, box_ioa, box_iou
from ..detection.nms import batched_nms
from ..detection.postprocess import Detections
from .detector import FrameDetector, resize_pixels

MODES = ("key", "changed", "brightness", "crops", "held", "static")


@dataclass(frozen=True)
class TemporalConfig:
    """Settings of :class:`TemporalDetector` (see the module doc)."""

    key_interval: int = 10
    diff_threshold: float = 18.0  # grey levels (0-255)
    cell: int = 8  # pixels per side of a change cell
    cell_fraction: float = 0.1  # changed pixels a cell needs
    dilate_cells: int = 1  # margin around each changed region, in cells
    min_region_cells: int = 2  # smaller components are noise
    max_changed: float = 0.35  # fraction of the frame: beyond it, a full frame (camera motion, a cut)
    max_brightness_shift: float = 10.0  # grey levels of mean brightness change: beyond it, a full frame
    max_crops: int = 3
    crop_size: int = 160  # smallest detector input side for crops (all crops of a frame share one size: one batch)
    min_crop: float = 0.3  # smallest crop, as a fraction of the frame's width and height
    max_crop: float = 1.0  # a region needing a larger crop (fraction of the frame) gets the full frame
    margin: float = 0.1  # added around each region, as a fraction of its size
    inner_motion: float = 0.3  # a region inside a tracked box and smaller than this fraction of it is ignored
    hold_frames: int = 1  # frames a large moving tracked object keeps its box when its crop would cost a full frame

    def __post_init__(self) -> None:
        if self.key_interval < 1:
            raise ValueError(f"key_interval must be >= 1, got {self.key_interval}")
        if self.hold_frames < 0:
            raise ValueError(f"hold_frames must be >= 0, got {self.hold_frames}")
        if self.cell < 1 or self.crop_size < 32:
            raise ValueError(f"need cell >= 1 and crop_size >= 32, got {self.cell}, {self.crop_size}")
        if not 0 < self.min_crop <= self.max_crop <= 1:
            raise ValueError(f"need 0 < min_crop <= max_crop <= 1, got {self.min_crop}, {self.max_crop}")
        if not 0 < self.max_changed <= 1:
            raise ValueError(f"max_changed must be in (0, 1], got {self.max_changed}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def grey(pixels: torch.Tensor) -> torch.Tensor:
    """(3, H, W) RGB float pixels -> (H, W) luma (ITU-R BT.601)."""
    return 0.299 * pixels[0] + 0.587 * pixels[1] + 0.114 * pixels[2]


@dataclass
class Change:
    """What changed between two frames: region boxes (R, 4) xyxy in pixels, the changed fraction of the
    frame (cells) and the shift in mean brightness (grey levels)."""

    regions: torch.Tensor
    fraction: float
    brightness_shift: float


def _dilate(mask: torch.Tensor, r: int) -> torch.Tensor:
    return F.max_pool2d(mask, 2 * r + 1, stride=1, padding=r) if r > 0 else mask


def _erode(mask: torch.Tensor, r: int) -> torch.Tensor:
    return -F.max_pool2d(-mask, 2 * r + 1, stride=1, padding=r) if r > 0 else mask


def connected_components(mask: torch.Tensor) -> torch.Tensor:
    """(h, w) bool -> (h, w) long labels (0 outside the mask, 8-connectivity), on the mask's device.

    Label propagation: every cell starts with its own number and repeatedly takes the largest number among
    its 8 neighbours inside the mask; it stops when no label changes (at most the longest path's length).
    """
    h, w = mask.shape
    m = mask.float()[None, None]
    labels = torch.arange(1, h * w + 1, device=mask.device, dtype=torch.float32).view(1, 1, h, w) * m
    for _ in range(h * w):
        # several rounds between checks: each check is a device sync
        new = labels
        for _ in range(4):
            new = F.max_pool2d(new, 3, stride=1, padding=1) * m
        if torch.equal(new, labels):
            break
        labels = new
    return labels[0, 0].long()


def component_boxes(labels: torch.Tensor, min_cells: int = 1) -> torch.Tensor:
    """(h, w) labels -> (R, 4) float xyxy cell boxes (x2, y2 exclusive) of components with >= ``min_cells``."""
    ys, xs = labels.nonzero(as_tuple=True)
    if ys.numel() == 0:
        return torch.zeros(0, 4, device=labels.device)
    _, idx, counts = labels[ys, xs].unique(return_inverse=True, return_counts=True)
    n = counts.numel()
    big = torch.full((n,), 1 << 30, device=labels.device)
    x1 = big.scatter_reduce(0, idx, xs, "amin")
    y1 = big.scatter_reduce(0, idx, ys, "amin")
    x2 = torch.zeros(n, dtype=torch.long, device=labels.device).scatter_reduce(0, idx, xs, "amax") + 1
    y2 = torch.zeros(n, dtype=torch.long, device=labels.device).scatter_reduce(0, idx, ys, "amax") + 1
    boxes = torch.stack((x1, y1, x2, y2), 1).float()
    return boxes[counts >= min_cells]


def find_changes(previous: torch.Tensor, current: torch.Tensor, cfg: TemporalConfig) -> Change:
    """(H, W) grey frames -> the changed regions (pixel boxes) and how much of the frame changed."""
    diff = (current - previous).abs()
    c = cfg.cell
    changed = F.avg_pool2d((diff > cfg.diff_threshold).float()[None, None], c, stride=c, ceil_mode=True)
    cells = (changed >= cfg.cell_fraction).float()
    fraction = float(cells.mean())
    shift = float((current.mean() - previous.mean()).abs())
    if fraction == 0 or fraction > cfg.max_changed:  # nothing, or a full frame anyway: no regions to find
        return Change(torch.zeros(0, 4, device=current.device), fraction, shift)
    closed = _erode(_dilate(cells, 1), 1)
    grown = _dilate(closed, cfg.dilate_cells)[0, 0] > 0
    boxes = component_boxes(connected_components(grown), cfg.min_region_cells + 2 * cfg.dilate_cells)
    h, w = current.shape
    boxes = (boxes * c).clamp(min=0)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(max=w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(max=h)
    return Change(boxes, fraction, shift)


def _merge_overlapping(boxes: torch.Tensor) -> torch.Tensor:
    """(R, 4) xyxy -> boxes where every overlapping group became its union."""
    boxes = boxes.clone()
    while boxes.shape[0] > 1:
        inter = box_intersection(boxes, boxes) > 0
        inter.fill_diagonal_(False)
        pairs = inter.nonzero()
        if pairs.numel() == 0:
            break
        i, j = (int(v) for v in pairs[0])
        union = torch.cat((torch.minimum(boxes[i, :2], boxes[j, :2]), torch.maximum(boxes[i, 2:], boxes[j, 2:])))
        keep = [k for k in range(boxes.shape[0]) if k not in (i, j)]
        boxes = torch.cat((boxes[keep], union[None]))
    return boxes


def outside_motion(regions: torch.Tensor, tracked: torch.Tensor, inner_motion: float) -> torch.Tensor:
    """The regions that are not small motion inside a tracked object: a region lying (90 %) within a tracked
    box and smaller than ``inner_motion`` of its area (someone standing and gesturing) leaves the box valid."""
    if regions.shape[0] == 0 or tracked.shape[0] == 0 or inner_motion <= 0:
        return regions
    inside = box_ioa(regions, tracked) >= 0.9  # (R, T)
    small = box_area(regions)[:, None] < inner_motion * box_area(tracked)[None, :]
    return regions[~(inside & small).any(1)]


def crop_windows(regions: torch.Tensor, tracked: torch.Tensor, size: tuple[int, int], cfg: TemporalConfig
                 ) -> torch.Tensor | None:
    """Crop windows (N, 4) xyxy pixels for changed ``regions``, or None when a full frame is needed.

    Each region takes in the tracked boxes it touches and a margin; overlapping regions merge; each window
    has the frame's aspect ratio (so the detector sees objects squeezed as in a full frame), at least
    ``min_crop`` of the frame, and stays inside it.
    """
    w, h = size
    if regions.shape[0] == 0:
        return regions
    grown = regions.clone()
    if tracked.shape[0]:
        touches = box_intersection(regions, tracked) > 0  # (R, T)
        for r in range(regions.shape[0]):
            hit = tracked[touches[r]]
            if hit.shape[0]:
                grown[r, :2] = torch.minimum(grown[r, :2], hit[:, :2].min(0).values)
                grown[r, 2:] = torch.maximum(grown[r, 2:], hit[:, 2:].max(0).values)
    grown = _merge_overlapping(grown)
    if grown.shape[0] > cfg.max_crops:  # many regions: one window around them all
        grown = torch.cat((grown[:, :2].min(0).values, grown[:, 2:].max(0).values))[None]
    windows = []
    for x1, y1, x2, y2 in grown.tolist():
        bw, bh = (x2 - x1) * (1 + 2 * cfg.margin), (y2 - y1) * (1 + 2 * cfg.margin)
        frac = max(bw / w, bh / h, cfg.min_crop)  # the window's side as a fraction of the frame's
        if frac > cfg.max_crop:
            return None
        cw, ch = frac * w, frac * h
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        left = min(max(cx - cw / 2, 0.0), w - cw)
        top = min(max(cy - ch / 2, 0.0), h - ch)
        windows.append((left, top, left + cw, top + ch))
    return torch.tensor(windows, device=regions.device)


def detections_in_pixels(d: Detections, window: tuple[float, float, float, float]) -> Detections:
    """Normalised detections of a crop -> frame pixels, given the crop's window (x1, y1, x2, y2)."""
    x1, y1, x2, y2 = window
    scale = d.boxes.new_tensor([x2 - x1, y2 - y1, x2 - x1, y2 - y1])
    offset = d.boxes.new_tensor([x1, y1, x1, y1])
    return Detections(d.boxes * scale + offset, d.scores, d.labels)


def _cat(parts: list[Detections], device: torch.device) -> Detections:
    if not parts:
        return Detections(torch.zeros(0, 4, device=device), torch.zeros(0, device=device),
                          torch.zeros(0, dtype=torch.long, device=device))
    return Detections(torch.cat([p.boxes for p in parts]), torch.cat([p.scores for p in parts]),
                      torch.cat([p.labels for p in parts]))


def _select(d: Detections, keep: torch.Tensor) -> Detections:
    return Detections(d.boxes[keep], d.scores[keep], d.labels[keep])


class TemporalDetector:
    """Detect objects frame after frame, re-running the detector only where the picture changed.

    ``step(pixels)`` takes one (3, H, W) float RGB frame on the detector's device and returns its detections
    in pixels (score >= ``score_threshold``) and a record (mode, changed fraction, regions, crops).
    """

    def __init__(self, detector: FrameDetector, cfg: TemporalConfig | None = None, *, score_threshold: float = 0.5,
                 iou_threshold: float = 0.5) -> None:
        self.detector = detector
        self.cfg = cfg or TemporalConfig()
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self._previous: torch.Tensor | None = None
        self._tracked: Detections | None = None
        self._since_key = 0
        self._held = 0  # consecutive frames whose large moving objects kept their boxes

    def reset(self) -> None:
        """Forget the previous frame (the next one is a key frame)."""
        self._previous, self._tracked, self._since_key, self._held = None, None, 0, 0

    def _full(self, pixels: torch.Tensor) -> Detections:
        d = self.detector.detect(resize_pixels(pixels[None], self.detector.input_size))[0]
        h, w = pixels.shape[-2:]
        return self._kept(d.scaled(w, h))

    def _kept(self, d: Detections) -> Detections:
        return _select(d, d.scores >= self.score_threshold)

    def step(self, pixels: torch.Tensor) -> tuple[Detections, dict[str, Any]]:
        cfg = self.cfg
        h, w = pixels.shape[-2:]
        g = grey(pixels)
        record: dict[str, Any] = {"changed": 0.0, "regions": 0, "crops": 0}
        mode = None
        if self._previous is None or self._tracked is None or self._since_key >= cfg.key_interval - 1:
            mode = "key"
        else:
            change = find_changes(self._previous, g, cfg)
            record.update(changed=round(change.fraction, 4), regions=int(change.regions.shape[0]))
            if change.fraction > cfg.max_changed:
                mode = "changed"
            elif change.brightness_shift > cfg.max_brightness_shift:
                mode = "brightness"
            elif (regions := outside_motion(change.regions, self._tracked.boxes, cfg.inner_motion)).shape[0] == 0:
                mode = "static"
            else:
                windows = crop_windows(regions, self._tracked.boxes, (w, h), cfg)
                side = None if windows is None else self.crop_input(windows, w)
                mh, mw = self.detector.input_size
                if windows is None or side is None or windows.shape[0] * side[0] * side[1] >= 0.9 * mh * mw:
                    # a full frame costs about as much as the crops: unless only tracked objects moved and they
                    # have not kept their boxes for long, detect the full frame
                    known = bool((box_intersection(regions, self._tracked.boxes) > 0).any(1).all()) \
                        if self._tracked.boxes.shape[0] else False
                    mode = "held" if known and self._held < cfg.hold_frames else "changed"
                else:
                    mode = "crops"
                    record.update(crops=int(windows.shape[0]), crop_input=side[0])
                    dets = self._crops(pixels, windows, side)
        self._previous = g
        self._held = self._held + 1 if mode == "held" else 0
        if mode in ("key", "changed", "brightness"):
            dets = self._full(pixels)
            self._since_key = 0
        elif mode in ("static", "held"):
            dets = self._tracked  # type: ignore[assignment]
            self._since_key += 1
        else:
            self._since_key += 1
        self._tracked = dets
        record["mode"] = mode
        return dets, record

    def crop_input(self, windows: torch.Tensor, frame_width: int) -> tuple[int, int] | None:
        """The detector input size for a batch of crop ``windows``: the largest window at the full frame's
        pixel scale (so no object is smaller than in a full-frame run), at least ``crop_size``, a multiple of 16;
        an exported graph's fixed size when the detector has one (None: it is not square)."""
        mh, mw = self.detector.input_size
        if not self.detector.flexible:
            return (mh, mw)
        frac = float((windows[:, 2] - windows[:, 0]).max()) / frame_width
        side = max(self.cfg.crop_size, 16 * math.ceil(frac * max(mh, mw) / 16))
        return (min(side, mh), min(side, mw))

    def _crops(self, pixels: torch.Tensor, windows: torch.Tensor, side: tuple[int, int]) -> Detections:
        """Detect in each window (one batch); keep tracked boxes whose centre lies outside every window."""
        crops = []
        for x1, y1, x2, y2 in windows.round().long().tolist():
            crops.append(resize_pixels(pixels[None, :, y1:y2, x1:x2], side))
        found = self.detector.detect(torch.cat(crops))
        parts = [self._kept(detections_in_pixels(d, tuple(win))) for d, win in zip(found, windows.round().tolist(),
                                                                                    strict=True)]
        tracked = self._tracked
        assert tracked is not None
        centres = (tracked.boxes[:, :2] + tracked.boxes[:, 2:]) / 2
        inside = ((centres[:, None, 0] >= windows[None, :, 0]) & (centres[:, None, 0] <= windows[None, :, 2])
                  & (centres[:, None, 1] >= windows[None, :, 1]) & (centres[:, None, 1] <= windows[None, :, 3]))
        parts.append(_select(tracked, ~inside.any(1)))
        merged = _cat(parts, pixels.device)
        keep = batched_nms(merged.boxes, merged.scores, merged.labels, self.iou_threshold)
        return _select(merged, keep)


def match_count(reference: Detections, other: Detections, iou: float = 0.5) -> int:
    """How many of ``reference``'s detections ``other`` has (same label, IoU >= ``iou``; greedy, best score
    first, each detection of ``other`` used once)."""
    if reference.boxes.shape[0] == 0 or other.boxes.shape[0] == 0:
        return 0
    overlaps = box_iou(reference.boxes, other.boxes)
    overlaps[reference.labels[:, None] != other.labels[None, :]] = 0
    used = torch.zeros(other.boxes.shape[0], dtype=torch.bool, device=overlaps.device)
    matched = 0
    for i in reference.scores.argsort(descending=True).tolist():
        row = overlaps[i].masked_fill(used, 0)
        j = int(row.argmax())
        if row[j] >= iou:
            used[j] = True
            matched += 1
    return matched
