"""Draw detections on an image with Pillow (boxes, label and score), for `mobilenet detect predict --out`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

# A fixed palette (Tableau 10) indexed by class, so one class keeps one colour across images.
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def draw_detections(image: Image.Image, detections: Sequence[dict[str, Any]], *, width: int | None = None
                    ) -> Image.Image:
    """A copy of ``image`` with each detection ({"box": [x1, y1, x2, y2] pixels, "label", "score",
    "class_id"}) drawn as a rectangle with a filled caption."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    line = width or max(2, round(min(out.size) / 200))
    font = ImageFont.load_default()
    for det in detections:
        x1, y1, x2, y2 = (float(v) for v in det["box"])
        colour = PALETTE[int(det.get("class_id", 0)) % len(PALETTE)]
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
        caption = f"{det['label']} {det['score']:.2f}"
        tx1, ty1, tx2, ty2 = draw.textbbox((0, 0), caption, font=font)
        tw, th = tx2 - tx1, ty2 - ty1
        top = y1 - th - 4 if y1 - th - 4 >= 0 else y1  # caption above the box unless it would leave the image
        draw.rectangle((x1, top, x1 + tw + 4, top + th + 4), fill=colour)
        draw.text((x1 + 2, top + 2 - ty1), caption, fill=(255, 255, 255), font=font)
    return out
