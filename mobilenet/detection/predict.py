"""Detect objects in image files: JSON-ready results (pixel boxes, scores, label names) and drawings."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..checkpoint import atomic_write
from ..weights import weights_info
from .boxes import clip_boxes
from .datasets import IMAGE_SUFFIXES
from .draw import draw_detections
from .ssd import SSD


def list_images(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Image files named in ``inputs``: files as given, folders expanded (sorted, image suffixes only)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {p}")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"image not found: {p}")
    return out


def model_input(image: Image.Image, model: SSD) -> torch.Tensor:
    """PIL image -> (3, H, W) normalised input: bilinear resize to the model's size (aspect not kept, as SSD)."""
    cfg = model.config
    h, w = cfg.image_size
    arr = np.asarray(image.convert("RGB").resize((w, h), Image.BILINEAR), dtype=np.float32)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    mean, std = torch.tensor(cfg.pixel_mean).view(3, 1, 1), torch.tensor(cfg.pixel_std).view(3, 1, 1)
    return (x - mean) / std


def class_names_of(model: SSD) -> list[str]:
    names = weights_info(model).classes
    return list(names) if names else [f"class_{k}" for k in range(model.config.num_classes)]


@torch.no_grad()
def detect_images(model: SSD, paths: Sequence[str | os.PathLike[str]], *, score_threshold: float = 0.3,
                  batch_size: int = 8, device: str | torch.device = "cpu") -> list[dict[str, Any]]:
    """One result per image: {"image", "width", "height", "detections": [{"box": [x1, y1, x2, y2] (pixels),
    "score", "label", "class_id"}]}, detections sorted by score, those below ``score_threshold`` dropped."""
    names = class_names_of(model)
    model.eval().to(device)
    results = []
    paths = [Path(p) for p in paths]
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        images, sizes = [], []
        for p in chunk:
            with Image.open(p) as im:
                images.append(model_input(im, model))
                sizes.append(im.size)
        dets = model.detect(torch.stack(images).to(device))
        for p, (w, h), d in zip(chunk, sizes, dets, strict=True):
            d = d.scaled(w, h)
            keep = d.scores >= score_threshold
            boxes = clip_boxes(d.boxes[keep], w, h)  # pixels inside the image (TF Lite's boxes may overhang)
            results.append({"image": str(p), "width": w, "height": h, "detections": [
                {"box": [round(float(v), 2) for v in box], "score": round(float(s), 4), "label": names[int(c)],
                 "class_id": int(c)}
                for box, s, c in zip(boxes.tolist(), d.scores[keep].tolist(), d.labels[keep].tolist(), strict=True)]})
    return results


def _readable(path: Path) -> None:
    """atomic_write's temporary files are private (0600); outputs get the usual umask permissions."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def write_outputs(results: list[dict[str, Any]], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``<stem>.jpg`` with the boxes drawn for each image and ``detections.json``; return the pictures."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures = []
    for r in results:
        with Image.open(r["image"]) as im:
            drawn = draw_detections(im, r["detections"])
        target = out_dir / f"{Path(r['image']).stem}.jpg"
        with atomic_write(target) as f:
            drawn.save(f, format="JPEG", quality=92)
        _readable(target)
        pictures.append(target)
    with atomic_write(out_dir / "detections.json", "w") as f:
        json.dump(results, f, indent=1)
    _readable(out_dir / "detections.json")
    return pictures


def read_predictions(path: str | os.PathLike[str], class_names: Sequence[str]
                     ) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Load the JSON ``detect predict`` writes -> {image file name stem: (boxes, scores, labels)}.

    Labels are matched by name to ``class_names``; an unknown name is an error naming it.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of per-image results as `mobilenet detect predict` writes")
    index = {n: i for i, n in enumerate(class_names)}
    out = {}
    for r in data:
        boxes, scores, labels = [], [], []
        for d in r.get("detections", []):
            if d["label"] not in index:
                raise ValueError(f"{path}: {r['image']}: label {d['label']!r} is not a class of the dataset "
                                 f"({', '.join(class_names)})")
            boxes.append(d["box"])
            scores.append(d["score"])
            labels.append(index[d["label"]])
        out[Path(r["image"]).stem] = (torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                      torch.tensor(scores, dtype=torch.float32), torch.tensor(labels, dtype=torch.long))
    return out
