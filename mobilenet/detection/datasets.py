"""Detection datasets: Pascal VOC, KITTI object and COCO JSON, read into one record type.

Every reader returns a ``DetectionDataset``: a list of ``Annotation`` (image path, size, pixel
boxes x1, y1, x2, y2, 0-based labels, ``difficult`` flags, ignore regions) plus ``class_names`` and
``problems``. Bad annotations (a box outside the image, x2 < x1, an unknown class, a missing image
file, unparsable text) are reported as ``"file:line: message"`` strings in ``problems`` and the
offending box or image is skipped; a reader never crashes on one bad file. Boxes that stick out of
the image are clipped (and reported); boxes with no area left are dropped.

Pixel convention: boxes are continuous coordinates with (0, 0) the top-left corner of the image.
VOC's 1-based inclusive pixel indices are kept as written (x1 = xmin, x2 = xmax), as the devkit
evaluates them (its IoU adds 1 to widths; see ``metrics.py``).
"""

from __future__ import annotations

import json
import random
import warnings
import xml.parsers.expat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.decode import ImageDecodeError, read_image, read_image_size

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
KITTI_CLASSES = ("Car", "Pedestrian", "Cyclist")
KITTI_TYPES = ("Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc", "DontCare")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass
class Annotation:
    """Ground truth of one image. Boxes in pixels (x1, y1, x2, y2); labels index ``class_names``."""

    image_id: str
    image_path: Path
    width: int
    height: int
    boxes: torch.Tensor  # (N, 4) float32 pixels
    labels: torch.Tensor  # (N,) int64, 0-based
    difficult: torch.Tensor  # (N,) bool: not counted by the VOC metric, neither TP nor FP
    ignore_boxes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4))  # (K, 4) DontCare / crowd
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. KITTI truncation/occlusion per object


class DetectionDataset(torch.utils.data.Dataset):
    """Annotations + class names; items are (PIL RGB image, Annotation), or ``transform`` of them."""

    def __init__(self, annotations: list[Annotation], class_names: list[str], problems: list[str] | None = None,
                 transform: Any = None) -> None:
        self.annotations = annotations
        self.class_names = list(class_names)
        self.problems = problems or []
        self.transform = transform

    def __len__(self) -> int:
        return len(self.annotations)

    def get(self, i: int, *, replace_unreadable: bool = True) -> Any:
        """Item ``i``. An image that cannot be decoded (truncated, corrupt) is replaced by the next readable
        one for training (with a warning), or, with ``replace_unreadable=False`` (evaluation), raises
        ``ImageDecodeError`` so that it is left out and listed instead."""
        n = len(self.annotations)
        for attempt in range(min(n, 16) if replace_unreadable else 1):
            ann = self.annotations[(i + attempt) % n]
            try:
                image = read_image(ann.image_path)  # upright (EXIF), RGB
            except ImageDecodeError as error:
                if not replace_unreadable:
                    raise
                warnings.warn(f"unreadable image replaced by the next one: {error}", stacklevel=2)
                continue
            return self.transform(image, ann) if self.transform is not None else (image, ann)
        raise RuntimeError(f"16 consecutive unreadable images starting at {self.annotations[i].image_path}")

    def __getitem__(self, i: int) -> Any:
        return self.get(i)

    def subset(self, indices: list[int]) -> DetectionDataset:
        return DetectionDataset([self.annotations[i] for i in indices], self.class_names, self.problems,
                                self.transform)


def _image_size(path: Path, where: str, problems: list[str]) -> tuple[int, int] | None:
    """The upright (EXIF-rotated) size from the header, or None (reported) for an empty or non-image file."""
    try:
        return read_image_size(path)
    except ImageDecodeError as error:
        problems.append(f"{where}: image {error}; skipped")
        return None


def _annotated_size(width: Any, height: Any, actual: tuple[int, int], where: str, problems: list[str]
                    ) -> tuple[int, int]:
    """The image's own (upright) size; an annotation that states another is reported: its boxes are then checked
    against, and scored on, the picture the detector sees (a wrong size in an XML must not rescale its boxes)."""
    try:
        stated = (int(float(width)), int(float(height)))
    except (TypeError, ValueError):
        return actual
    if stated != actual and stated != (0, 0):
        problems.append(f"{where}: the annotation says the image is {stated[0]}x{stated[1]}, the file is "
                        f"{actual[0]}x{actual[1]}; the file's size is used")
    return actual


def _checked_box(box: list[float], width: int, height: int, where: str, problems: list[str]) -> list[float] | None:
    """Validate one pixel box against its image; clip what sticks out; None (reported) when unusable."""
    x1, y1, x2, y2 = box
    if not all(v == v and abs(v) != float("inf") for v in box):
        problems.append(f"{where}: box {box} is not finite; skipped")
        return None
    if x2 < x1 or y2 < y1:
        problems.append(f"{where}: box {box} has x2 < x1 or y2 < y1; skipped")
        return None
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        clipped = [min(max(x1, 0), width), min(max(y1, 0), height), min(max(x2, 0), width), min(max(y2, 0), height)]
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            problems.append(f"{where}: box {box} lies outside the {width}x{height} image; skipped")
            return None
        problems.append(f"{where}: box {box} extends outside the {width}x{height} image; clipped")
        return clipped
    return [x1, y1, x2, y2]


def _tensors(boxes: list[list[float]], labels: list[int], difficult: list[bool]) -> tuple[torch.Tensor, ...]:
    return (torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(labels, dtype=torch.long),
            torch.tensor(difficult, dtype=torch.bool))


# ---- Pascal VOC ----

def _parse_voc_xml(path: Path) -> dict[str, Any]:
    """A VOC annotation as {"size": {...}, "filename": str, "objects": [{field: text, "line": n, ...}]}.

    Expat (not ElementTree) so that every object keeps the line it starts on, for error messages.
    """
    result: dict[str, Any] = {"size": {}, "objects": [], "filename": None}
    stack: list[str] = []
    text: list[str] = []
    parser = xml.parsers.expat.ParserCreate()

    def start(name: str, attrs: dict[str, str]) -> None:
        stack.append(name)
        text.clear()
        if name == "object" and len(stack) == 2:
            result["objects"].append({"line": parser.CurrentLineNumber})

    def end(name: str) -> None:
        value = "".join(text).strip()
        parent = stack[-2] if len(stack) >= 2 else None
        if parent == "size" and len(stack) == 3:
            result["size"][name] = value
        elif parent == "annotation" and name == "filename":
            result["filename"] = value
        elif len(stack) == 3 and stack[1] == "object" and name in ("name", "difficult", "truncated"):
            result["objects"][-1][name] = value
        elif len(stack) == 4 and stack[1] == "object" and stack[2] == "bndbox":
            result["objects"][-1].setdefault("bndbox", {})[name] = value
            result["objects"][-1].setdefault("box_line", parser.CurrentLineNumber)
        stack.pop()
        text.clear()

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text.append
    with open(path, "rb") as f:
        parser.ParseFile(f)
    return result


def read_voc(root: str | Path, split: str = "trainval", class_names: tuple[str, ...] | list[str] = VOC_CLASSES,
             *, keep_difficult: bool = True) -> DetectionDataset:
    """Pascal VOC from ``root`` (a ``VOC2007``-like folder with Annotations, JPEGImages, ImageSets/Main).

    ``split`` names ``ImageSets/Main/<split>.txt``. ``root`` may also be a ``VOCdevkit`` folder: every
    ``VOC*`` year inside it is read and concatenated (e.g. 07+12).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"VOC folder not found: {root}")
    if not (root / "Annotations").is_dir():
        years = sorted(p for p in root.glob("VOC*") if (p / "Annotations").is_dir())
        if not years:
            raise FileNotFoundError(f"{root} has no Annotations/ folder and no VOC*/Annotations inside")
        parts = [read_voc(y, split, class_names, keep_difficult=keep_difficult) for y in years]
        return DetectionDataset([a for p in parts for a in p.annotations], list(class_names),
                                [m for p in parts for m in p.problems])
    list_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not list_file.is_file():
        raise FileNotFoundError(f"VOC split list not found: {list_file}")
    index = {n: i for i, n in enumerate(class_names)}
    anns, problems = [], []
    ids = [ln.split()[0] for ln in list_file.read_text().splitlines() if ln.strip()]
    for image_id in ids:
        xml_path = root / "Annotations" / f"{image_id}.xml"
        if not xml_path.is_file():
            problems.append(f"{list_file}: {image_id}: annotation file {xml_path} is missing; image skipped")
            continue
        try:
            doc = _parse_voc_xml(xml_path)
        except xml.parsers.expat.ExpatError as e:
            problems.append(f"{xml_path}:{e.lineno}: unreadable XML ({xml.parsers.expat.ErrorString(e.code)}); skipped")
            continue
        image_path = root / "JPEGImages" / (doc["filename"] or f"{image_id}.jpg")
        if not image_path.is_file():
            image_path = root / "JPEGImages" / f"{image_id}.jpg"
        if not image_path.is_file():
            problems.append(f"{xml_path}:1: image file {image_path} is missing; skipped")
            continue
        size = _image_size(image_path, f"{xml_path}:1", problems)  # also refuses empty and non-image files
        if size is None:
            continue
        width, height = _annotated_size(doc["size"].get("width"), doc["size"].get("height"), size,
                                        f"{xml_path}:1", problems)
        boxes, labels, difficult = [], [], []
        for obj in doc["objects"]:
            where = f"{xml_path}:{obj['line']}"
            name = obj.get("name", "")
            if name not in index:
                problems.append(f"{where}: unknown class {name!r}; object skipped")
                continue
            try:
                bb = obj["bndbox"]
                raw = [float(bb["xmin"]), float(bb["ymin"]), float(bb["xmax"]), float(bb["ymax"])]
            except (KeyError, ValueError):
                problems.append(f"{where}: object {name!r} has no valid bndbox; skipped")
                continue
            box = _checked_box(raw, width, height, f"{xml_path}:{obj.get('box_line', obj['line'])}", problems)
            is_difficult = obj.get("difficult", "0") == "1"
            if box is None or (is_difficult and not keep_difficult):
                continue
            boxes.append(box)
            labels.append(index[name])
            difficult.append(is_difficult)
        b, lab, d = _tensors(boxes, labels, difficult)
        anns.append(Annotation(image_id, image_path, width, height, b, lab, d))
    return DetectionDataset(anns, list(class_names), problems)


# ---- KITTI object ----

def kitti_split(ids: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded random (train, val) split of frame ids, stable across runs and machines."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    ids = sorted(ids)
    random.Random(seed).shuffle(ids)
    n_val = round(len(ids) * val_fraction)
    return sorted(ids[n_val:]), sorted(ids[:n_val])


def read_kitti(root: str | Path, split: str = "all", class_names: tuple[str, ...] | list[str] = KITTI_CLASSES, *,
               val_fraction: float = 0.2, seed: int = 0) -> DetectionDataset:
    """KITTI object detection from ``root`` (the ``training`` folder with ``image_2/`` and ``label_2/``).

    ``split``: "all", or "train"/"val" of a seeded random split. ``DontCare`` regions become
    ``ignore_boxes``; objects of other types (Van, Truck, Person_sitting, ...) are not targets but are
    kept in ``extra["kitti"]`` with truncation and occlusion for the KITTI metric.
    """
    root = Path(root)
    img_dir, lbl_dir = root / "image_2", root / "label_2"
    for d in (img_dir, lbl_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"KITTI folder not found: {d} (expected <root>/image_2 and <root>/label_2)")
    if split not in ("all", "train", "val"):
        raise ValueError(f"KITTI split must be 'all', 'train' or 'val', got {split!r}")
    ids = sorted(p.stem for p in lbl_dir.glob("*.txt"))
    if split != "all":
        train, val = kitti_split(ids, val_fraction, seed)
        ids = train if split == "train" else val
    index = {n: i for i, n in enumerate(class_names)}
    anns, problems = [], []
    for image_id in ids:
        label_path = lbl_dir / f"{image_id}.txt"
        candidates = (img_dir / f"{image_id}{s}" for s in IMAGE_SUFFIXES)
        image_path = next((p for p in candidates if p.is_file()), None)
        if image_path is None:
            problems.append(f"{label_path}:1: image file {img_dir / image_id}.png is missing; skipped")
            continue
        size = _image_size(image_path, f"{label_path}:1", problems)
        if size is None:
            continue
        width, height = size
        boxes, labels, ignore, objects = [], [], [], []
        for n, line in enumerate(label_path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{label_path}:{n}"
            f = line.split()
            try:
                if len(f) < 8:  # type, truncation, occlusion, alpha, the box; then 3D size, location, rotation
                    raise ValueError
                kind, trunc, occ = f[0], float(f[1]), int(float(f[2]))
                raw = [float(v) for v in f[4:8]]
            except (IndexError, ValueError):
                problems.append(f"{where}: cannot parse {line.strip()!r} (expected type truncation occlusion alpha "
                                "x1 y1 x2 y2 ...); skipped")
                continue
            if kind not in KITTI_TYPES and kind not in index:
                problems.append(f"{where}: unknown object type {kind!r}; skipped")
                continue
            box = _checked_box(raw, width, height, where, problems)
            if box is None:
                continue
            if kind == "DontCare":
                ignore.append(box)
                continue
            objects.append({"type": kind, "truncation": trunc, "occlusion": occ, "box": box})
            if kind in index:
                boxes.append(box)
                labels.append(index[kind])
        b, lab, d = _tensors(boxes, labels, [False] * len(labels))
        anns.append(Annotation(image_id, image_path, width, height, b, lab, d,
                               torch.tensor(ignore, dtype=torch.float32).reshape(-1, 4), {"kitti": objects}))
    return DetectionDataset(anns, list(class_names), problems)


# ---- COCO JSON ----

def _coco_lists(doc: Any, path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(categories sorted by id, images, annotations) of a COCO document, or a ValueError naming what is wrong."""
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a COCO annotation object with \"images\", \"annotations\" and "
                         f"\"categories\", got a JSON {type(doc).__name__}")
    lists = []
    for key in ("categories", "images", "annotations"):
        value = doc.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ValueError(f"{path}: \"{key}\" must be a list of objects")
        lists.append(value)
    cats, images, annotations = lists
    if not cats:
        raise ValueError(f"{path}: no \"categories\": a COCO file names its classes there")
    bad = [c for c in cats if not isinstance(c.get("id"), int) or not isinstance(c.get("name"), str)]
    if bad:
        raise ValueError(f"{path}: every category needs an integer \"id\" and a \"name\", got {str(bad[0])[:80]}")
    return sorted(cats, key=lambda c: c["id"]), images, annotations


def read_coco(annotation_file: str | Path, image_dir: str | Path | None = None) -> DetectionDataset:
    """COCO-format JSON (``images``, ``annotations`` with ``bbox`` as x, y, w, h, ``categories``).

    Classes are the categories sorted by id; ``iscrowd`` boxes become ignore regions. ``image_dir``
    defaults to the JSON file's folder. COCO's category id is kept in ``extra["category_ids"]``.
    """
    annotation_file = Path(annotation_file)
    if not annotation_file.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {annotation_file}")
    image_dir = Path(image_dir) if image_dir is not None else annotation_file.parent
    try:
        doc = json.loads(annotation_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{annotation_file}:{e.lineno}: not valid JSON ({e.msg})") from None
    cats, images, annotations = _coco_lists(doc, annotation_file)
    index = {c["id"]: i for i, c in enumerate(cats)}
    per_image: dict[Any, list[dict[str, Any]]] = {}
    for k, a in enumerate(annotations):
        per_image.setdefault(a.get("image_id"), []).append({**a, "_index": k})
    anns, problems = [], []
    for k, img in enumerate(images):
        if not isinstance(img.get("file_name"), str) or "id" not in img:
            problems.append(f"{annotation_file}: images[{k}] needs \"id\" and \"file_name\"; skipped")
            continue
        image_path = image_dir / img["file_name"]
        if not image_path.is_file():
            problems.append(f"{annotation_file}: image id {img['id']}: file {image_path} is missing; skipped")
            continue
        size = _image_size(image_path, f"{annotation_file}: image id {img['id']}", problems)
        if size is None:
            continue
        width, height = _annotated_size(img.get("width"), img.get("height"), size,
                                        f"{annotation_file}: image id {img['id']}", problems)
        boxes, labels, ignore = [], [], []
        for a in per_image.get(img["id"], []):
            where = f"{annotation_file}: annotations[{a['_index']}]"
            if a.get("category_id") not in index:
                problems.append(f"{where}: unknown category_id {a.get('category_id')!r}; skipped")
                continue
            try:
                x, y, w, h = (float(v) for v in a["bbox"])
            except (KeyError, TypeError, ValueError):
                problems.append(f"{where}: bbox missing or not 4 numbers; skipped")
                continue
            box = _checked_box([x, y, x + w, y + h], width, height, where, problems)
            if box is None:
                continue
            if a.get("iscrowd"):
                ignore.append(box)
            else:
                boxes.append(box)
                labels.append(index[a["category_id"]])
        b, lab, d = _tensors(boxes, labels, [False] * len(labels))
        anns.append(Annotation(str(img["id"]), image_path, width, height, b, lab, d,
                               torch.tensor(ignore, dtype=torch.float32).reshape(-1, 4)))
    ds = DetectionDataset(anns, [c["name"] for c in cats], problems)
    ds.category_ids = [c["id"] for c in cats]  # type: ignore[attr-defined]
    return ds


def read_dataset(fmt: str, root: str | Path, split: str, class_names: list[str] | None = None,
                 **kwargs: Any) -> DetectionDataset:
    """Dispatch on ``fmt`` ("voc", "kitti", "coco"); for COCO ``root`` is the JSON file."""
    if fmt == "voc":
        return read_voc(root, split, tuple(class_names or VOC_CLASSES))
    if fmt == "kitti":
        return read_kitti(root, split, tuple(class_names or KITTI_CLASSES), **kwargs)
    if fmt == "coco":
        return read_coco(root, kwargs.get("image_dir"))
    raise ValueError(f"dataset format must be 'voc', 'kitti' or 'coco', got {fmt!r}")
