"""A generated detection set: coloured shapes (circle, square, triangle) on textured backgrounds.

Written to disk in the Pascal VOC layout (JPEG/PNG images, XML annotations, ImageSets/Main lists),
so the same readers, commands and metrics run on it as on real data. Used by the evidence test
(a small SSD must reach mAP@0.5 >= 0.9 on it) and by the CLI tests and demo.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPE_CLASSES = ("circle", "square", "triangle")
# With ``easy=True`` each class has its own hue (jittered) on a grey background: the class is visible
# in colour as well as in shape, which lets a tiny SSD from scratch learn it in a CPU test's budget.
CLASS_COLOURS = ((220, 40, 40), (40, 200, 40), (40, 80, 230))


def _background(rng: random.Random, size: int, grey: bool = False) -> Image.Image:
    """A smooth two-colour gradient with pixel noise: enough texture that "not flat" is not "object"."""
    if grey:
        c0, c1 = (np.full(3, rng.randint(60, 190), dtype=np.float32) for _ in range(2))
    else:
        c0 = np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.float32)
        c1 = np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.float32)
    t = np.linspace(0, 1, size, dtype=np.float32)
    grad = t[:, None, None] * c1 + (1 - t[:, None, None]) * c0  # (size, 1, 3)
    grad = np.broadcast_to(grad, (size, size, 3))
    if rng.random() < 0.5:
        grad = grad.transpose(1, 0, 2)
    noise = np.random.default_rng(rng.randint(0, 2**31)).normal(0, 12, (size, size, 3))
    return Image.fromarray(np.clip(grad + noise, 0, 255).astype(np.uint8))


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], colour: tuple[int, ...]) -> None:
    x1, y1, x2, y2 = box
    if kind == "circle":
        draw.ellipse(box, fill=colour)
    elif kind == "square":
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=colour)
    else:
        draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=colour)


def _overlap(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])


def make_shapes_voc(root: str | Path, *, num_train: int = 200, num_test: int = 50, image_size: int = 96,
                    max_objects: int = 3, min_frac: float = 0.2, max_frac: float = 0.5, easy: bool = False,
                    seed: int = 0) -> Path:
    """Write a VOC-layout shapes set under ``root`` (ImageSets/Main/trainval.txt and test.txt); return root.

    Objects do not overlap each other, so every box is fully visible and its class unambiguous.
    """
    root = Path(root)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    splits: dict[str, list[str]] = {"trainval": [], "test": []}
    for i in range(num_train + num_test):
        image_id = f"{i:06d}"
        img = _background(rng, image_size, grey=easy)
        draw = ImageDraw.Draw(img)
        placed: list[tuple[int, int, int, int, str]] = []
        for _ in range(rng.randint(1, max_objects)):
            for _try in range(20):
                side = rng.randint(int(min_frac * image_size), int(max_frac * image_size))
                x1, y1 = rng.randint(0, image_size - side), rng.randint(0, image_size - side)
                box = (x1, y1, x1 + side, y1 + side)
                if not any(_overlap(box, p[:4]) for p in placed):
                    kind = rng.choice(SHAPE_CLASSES)
                    if easy:
                        base = CLASS_COLOURS[SHAPE_CLASSES.index(kind)]
                        colour = tuple(min(max(c + rng.randint(-30, 30), 0), 255) for c in base)
                    else:
                        colour = tuple(rng.randint(0, 255) for _ in range(3))
                    _draw_shape(draw, kind, box, colour)
                    placed.append((*box, kind))
                    break
        img.save(root / "JPEGImages" / f"{image_id}.png")
        objects = "".join(
            f"<object><name>{k}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
            f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>\n" for x1, y1, x2, y2, k in placed)
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation>\n<filename>{image_id}.png</filename>\n<size><width>{image_size}</width>"
            f"<height>{image_size}</height><depth>3</depth></size>\n{objects}</annotation>\n")
        splits["trainval" if i < num_train else "test"].append(image_id)
    for name, ids in splits.items():
        (root / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root
