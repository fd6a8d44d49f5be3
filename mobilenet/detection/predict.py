"""Detect objects in image files: JSON-ready results (pixel boxes, scores, label names) and drawings."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..data.decode import ImageDecodeError, read_image, unreadable
from ..predict import expand_inputs, write_pictures
from ..weights import weights_info
from .augment import resize_input
from .boxes import clip_boxes
from .draw import draw_detections
from .labels import class_index
from .ssd import SSD


def list_images(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Image files named in ``inputs``: files as given, folders searched recursively (sorted), globs expanded
    (``mobilenet.predict.expand_inputs``, shared with classification)."""
    return expand_inputs([os.fspath(p) for p in inputs])


def model_input(image: Image.Image, model: SSD) -> torch.Tensor:
    """PIL image -> (3, H, W) normalised input at the model's size (``augment.resize_input``, as evaluation)."""
    cfg = model.config
    return resize_input(image, cfg.image_size, cfg.pixel_mean, cfg.pixel_std)


def load_inputs(model: SSD, inputs: Sequence[str | os.PathLike[str]], limit: int | None = None
                ) -> tuple[torch.Tensor, list[str]]:
    """(N, 3, H, W) model inputs of the first ``limit`` images under ``inputs`` (e.g. int8 calibration), and the
    images left out as unreadable (``"path: reason"``; never replaced by another image)."""
    batch, skipped = [], []
    for p in list_images(inputs)[:limit]:
        try:
            batch.append(model_input(read_image(p), model))
        except ImageDecodeError as error:
            skipped.append(str(error))
    if not batch:
        raise ValueError(f"no readable image in {' '.join(str(i) for i in inputs)}")
    return torch.stack(batch), skipped


def class_names_of(model: SSD) -> list[str]:
    names = weights_info(model).classes
    return list(names) if names else [f"class_{k}" for k in range(model.config.num_classes)]


@torch.no_grad()
def detect_images(model: SSD, paths: Sequence[str | os.PathLike[str]], *, score_threshold: float = 0.3,
                  batch_size: int = 8, device: str | torch.device = "cpu") -> list[dict[str, Any]]:
    """One result per image: {"image", "width", "height", "detections": [{"box": [x1, y1, x2, y2] (pixels),
    "score", "label", "class_id"}]}, detections sorted by score, those below ``score_threshold`` dropped.

    Images are read upright (EXIF orientation applied); one that cannot be read gets ``{"image", "error",
    "detections": []}`` and the others go on."""
    names = class_names_of(model)
    model.eval().to(device)
    results: list[dict[str, Any]] = []
    readable: list[tuple[int, Path, torch.Tensor, tuple[int, int]]] = []  # (slot in results, path, input, size)

    def flush() -> None:
        if not readable:
            return
        dets = model.detect(torch.stack([x for _, _, x, _ in readable]).to(device))
        for (slot, p, _, (w, h)), d in zip(readable, dets, strict=True):
            d = d.scaled(w, h)
            keep = d.scores >= score_threshold
            boxes = clip_boxes(d.boxes[keep], w, h)  # pixels inside the image (TF Lite's boxes may overhang)
            results[slot] = {"image": str(p), "width": w, "height": h, "detections": [
                {"box": [round(float(v), 2) for v in box], "score": round(float(s), 4), "label": names[int(c)],
                 "class_id": int(c)}
                for box, s, c in zip(boxes.tolist(), d.scores[keep].tolist(), d.labels[keep].tolist(), strict=True)]}
        readable.clear()

    for p in (Path(p) for p in paths):
        try:
            image = read_image(p)  # upright (EXIF orientation), truncated files and bombs refused
        except ImageDecodeError as error:
            results.append({"image": str(p), "error": unreadable(error),
                            "detections": []})
            continue
        readable.append((len(results), p, model_input(image, model), image.size))
        results.append({})
        if len(readable) == batch_size:
            flush()
    flush()
    return results


def write_outputs(results: list[dict[str, Any]], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write each image with its boxes drawn and ``detections.json``; return the pictures.

    Pictures keep their input's relative name and format (``a/x.png`` stays a PNG; two ``x.jpg`` from different
    folders stay apart; one that would overwrite its input is refused: see ``mobilenet.predict.write_pictures``);
    images that could not be read get none. Small images are drawn enlarged, so their captions stay readable.
    """
    return write_pictures(results, out_dir, lambda image, r: draw_detections(image, r["detections"], enlarge=True),
                          key="image", json_name="detections.json")


def read_predictions(path: str | os.PathLike[str], class_names: Sequence[str], *,
                     label_map: Mapping[str, str] | None = None, seen: dict[str, int] | None = None
                     ) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Load the JSON ``detect predict`` writes -> {image file name stem: (boxes, scores, labels)}.

    Labels are matched to ``class_names`` as a detector's classes are (``labels.class_index``: ``label_map``,
    the same name in any case, VOC's spellings of COCO's classes); detections of other labels are left out, and
    ``seen`` (when given) receives every label with the class index it got (-1: left out). A file whose labels
    match no class at all is an error naming them.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of per-image results as `mobilenet detect predict` writes")
    index: dict[str, int] = {}
    out = {}
    for k, r in enumerate(data):
        where = f"{path}: entry {k}"
        if not isinstance(r, dict) or not isinstance(r.get("image"), str):
            raise ValueError(f"{where}: expected an object with an \"image\" file name, as `mobilenet detect "
                             f"predict` writes; got {str(r)[:80]}")
        if "error" in r:  # an image detect predict could not read: nothing was predicted for it
            continue
        dets = r.get("detections", [])
        if not isinstance(dets, list):
            raise ValueError(f"{where} ({r['image']}): \"detections\" must be a list")
        boxes, scores, labels = [], [], []
        for j, d in enumerate(dets):
            try:
                label, box, score = d["label"], [float(v) for v in d["box"]], float(d["score"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{where} ({r['image']}): detection {j} needs \"label\", a 4-number \"box\" and "
                                 "a \"score\"") from None
            if len(box) != 4 or not all(math.isfinite(v) for v in (*box, score)):
                raise ValueError(f"{where} ({r['image']}): detection {j} needs 4 finite box numbers and a finite "
                                 "score")
            if label not in index:
                index[label] = class_index([str(label)], class_names, label_map)[0]
            if index[label] < 0:  # a class the dataset does not have (COCO's "cup" on VOC): not scored
                continue
            boxes.append(box)
            scores.append(score)
            labels.append(index[label])
        out[Path(r["image"]).stem] = (torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                      torch.tensor(scores, dtype=torch.float32), torch.tensor(labels, dtype=torch.long))
    if index and max(index.values()) < 0:
        raise ValueError(f"{path}: its labels ({', '.join(sorted(map(str, index))[:5])}) are no class of the dataset "
                         f"({', '.join(class_names)}): map them with --label-map")
    if seen is not None:
        seen.update(index)
    return out
