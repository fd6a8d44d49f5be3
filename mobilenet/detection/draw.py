"""Draw detections on an image with Pillow (boxes, label and score), for `mobilenet detect predict`'s pictures.

Captions are laid out by ``place_captions``: each sits above its box (else inside it, else below), inside the
picture, and clear of the captions placed before it (the highest scores first), so none is cut at an edge or
hidden under another. Small images are drawn enlarged (``mobilenet.predict.display_copy``) so captions stay
readable; the boxes in the results stay in the input's pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw

from ..predict import caption_font, display_copy

# A fixed palette (Tableau 10) indexed by class, so one class keeps one colour across images.
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
Rect = tuple[float, float, float, float]  # x1, y1, x2, y2


def _overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _inside(left: float, y: float, tw: float, th: float, height: float) -> Rect:
    y = max(0.0, min(y, height - th))
    return (left, y, left + tw, y + th)


def place_captions(boxes: Sequence[Rect], sizes: Sequence[tuple[float, float]], canvas: tuple[int, int]
                   ) -> list[Rect]:
    """Where each box's caption of ``sizes[i]`` (width, height) goes on a ``canvas`` (width, height) at least as
    large as every caption: above the box, inside its top, below it or inside its bottom, whichever is first clear
    of the captions already placed; otherwise the nearest clear row of the picture; overlapping only when the
    picture has no clear row left. Every caption lies inside the canvas."""
    cw, ch = canvas
    placed: list[Rect] = []
    for (x1, y1, _, y2), (tw, th) in zip(boxes, sizes, strict=True):
        left = max(0.0, min(x1, cw - tw))
        candidates = [_inside(left, y, tw, th, ch) for y in (y1 - th, y1, y2, y2 - th)]
        rows = sorted((_inside(left, k * th, tw, th, ch) for k in range(int(ch // max(th, 1)) + 1)),
                      key=lambda r: abs(r[1] - candidates[0][1]))
        spot = next((r for r in candidates + rows if not any(_overlaps(r, q) for q in placed)), candidates[0])
        placed.append(spot)
    return placed


def draw_detections(image: Image.Image, detections: Sequence[dict[str, Any]], *, width: int | None = None,
                    enlarge: bool = False) -> Image.Image:
    """A copy of ``image`` with each detection ({"box": [x1, y1, x2, y2] pixels of ``image``, "label", "score",
    "class_id"}) drawn as a rectangle with a filled caption (``place_captions``). ``enlarge`` (pictures, not video
    frames, which keep their size): a small image is drawn enlarged and one thinner than a caption is widened."""
    out, scale = display_copy(image) if enlarge else (image.convert("RGB").copy(), 1)
    font = caption_font(out.size)
    pad = 2
    probe = ImageDraw.Draw(out)
    dets = sorted(detections, key=lambda d: -float(d["score"]))
    captions = [f"{d['label']} {float(d['score']):.2f}" for d in dets]
    extents = [probe.textbbox((0, 0), c, font=font) for c in captions]
    sizes = [(e[2] - e[0] + 2 * pad, e[3] - e[1] + 2 * pad) for e in extents]
    need_w, need_h = max([w for w, _ in sizes], default=0), max([h for _, h in sizes], default=0)
    if enlarge and (need_w > out.width or need_h > out.height):  # a picture thinner than one caption: widen it (white)
        grown = Image.new("RGB", (max(out.width, need_w), max(out.height, need_h)), (255, 255, 255))
        grown.paste(out, (0, 0))
        out = grown
    draw = ImageDraw.Draw(out)
    line = width or max(2, round(min(out.size) / 200))
    boxes = [tuple(float(v) * scale for v in d["box"]) for d in dets]
    for det, box in zip(dets, boxes, strict=True):
        colour = PALETTE[int(det.get("class_id", 0)) % len(PALETTE)]
        draw.rectangle(box, outline=colour, width=line)
    for det, caption, extent, spot in zip(dets, captions, extents, place_captions(boxes, sizes, out.size),
                                          strict=True):
        colour = PALETTE[int(det.get("class_id", 0)) % len(PALETTE)]
        draw.rectangle(spot, fill=colour)
        draw.text((spot[0] + pad - extent[0], spot[1] + pad - extent[1]), caption, fill=(255, 255, 255), font=font)
    return out
