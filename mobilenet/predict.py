"""Image(s) -> top-k labels with probabilities, using the preprocessing stored with the weights.

Inputs are files, folders (searched recursively) or globs (``expand_inputs``); each image is read by
``mobilenet.data.read_image`` (EXIF orientation applied, truncated files and decompression bombs refused), and
an unreadable one is left out of the batch and listed with its reason, never replaced by another.
``output_names`` gives every input a short, unique, relative name for files written per input (two
``x.jpg`` in different folders become ``a/x.jpg`` and ``b/x.jpg``; the suffix is kept).

Pictures (classification and detection alike): ``new_run_folder`` makes the auto-numbered folder they go to when
none is given (``runs/classify/predict``, ``predict2`` ... as Ultralytics numbers them; ``$MOBILENET_RUNS``
moves ``runs``), ``picture_targets`` plans each input's picture (refusing one that would overwrite an input),
``display_copy`` / ``caption_font`` size small images and captions so a caption is readable and never cut at the
edge, and ``write_pictures`` writes them with the results JSON beside them. ``draw_topk`` is the classifier's
picture: the image with its top-k caption.
"""

from __future__ import annotations

import glob as globlib
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from .checkpoint import atomic_write
from .data.decode import IMAGE_EXTENSIONS, ImageDecodeError, has_image_extension, read_image, unreadable
from .inference import check_finite, class_names, decode_predictions, model_preprocessing, readable_names
from .preprocessing import Preprocessing
from .strict_json import dump

IMAGE_SUFFIXES = tuple(sorted(IMAGE_EXTENSIONS))
# Their home is mobilenet.inference; these names stay importable from here (serve, eval, the demo use them).
_label_names, _readable_names = class_names, readable_names
__all__ = ["caption_font", "check_finite", "display_copy", "draw_topk", "expand_inputs", "model_preprocessing",
           "new_run_folder", "output_names", "picture_targets", "predict", "require_classifier", "topk_caption",
           "topk_layout", "write_pictures"]
RUNS = "runs"  # where auto-numbered run folders go ($MOBILENET_RUNS overrides it)
# Formats a picture is written in when its input had that suffix; anything else becomes a JPEG.
PICTURE_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "TIFF", "GIF", "PPM")
# Pictures are drawn at least this large (shorter side, integer upscaling) while the longer side stays within
# DISPLAY_MAX: a 32x32 CIFAR image's caption would otherwise cover or overflow it.
DISPLAY_MIN, DISPLAY_MAX = 256, 4096


def expand_inputs(specs: Iterable[str]) -> list[Path]:
    """Image files named by each spec: a file, a folder (its images, recursively, sorted) or a glob. A broken
    symbolic link (dangling, or a loop) is kept, so that reading it reports it rather than it vanishing."""
    out: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if p.is_file() or (p.is_symlink() and not p.exists()):  # a broken link: read, so that it is reported
            out.append(p)
        elif p.is_dir():
            found = sorted(f for f in p.rglob("*") if (f.is_file() or (f.is_symlink() and not f.exists()))
                           and has_image_extension(f.name)
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under folder {spec}")
            out += found
        elif globlib.has_magic(spec):
            found = sorted(Path(f) for f in globlib.glob(spec, recursive=True) if Path(f).is_file())
            if not found:
                raise FileNotFoundError(f"the pattern {spec!r} matches no files")
            out += found
        else:
            raise FileNotFoundError(f"image not found: {spec} (no such file, folder or glob pattern)")
    return out


def output_names(paths: Sequence[str | Path]) -> list[str]:
    """A unique relative name per path, as short as possible: the file name, with as many parent folders in
    front as it takes to tell same-named files apart (``a/x.jpg``, ``b/x.jpg``); the same file given twice gets
    ``-2``, ``-3`` ... before its suffix. Suffixes are kept, so a PNG's output stays a PNG."""
    resolved = [Path(p).resolve() for p in paths]
    distinct = list(dict.fromkeys(resolved))  # the same file twice is told apart by -2 below, not by folders
    parts = [p.parts for p in distinct]
    depth = [1] * len(parts)
    while True:
        names = ["/".join(ps[-d:]) for ps, d in zip(parts, depth, strict=True)]
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(names):
            groups.setdefault(name, []).append(i)
        grew = False
        for members in groups.values():
            if len(members) > 1:
                for i in members:
                    if depth[i] < len(parts[i]) - 1:  # never the filesystem root
                        depth[i] += 1
                        grew = True
        if not grew:
            break
    name_of = dict(zip(distinct, names, strict=True))
    seen: dict[str, int] = {}
    unique = []
    for path in resolved:
        name = name_of[path]
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            stem, dot, suffix = name.rpartition(".")
            name = f"{stem}-{seen[name]}.{suffix}" if dot and "/" not in suffix else f"{name}-{seen[name]}"
        unique.append(name)
    return unique


def require_classifier(model: nn.Module, source: str = "the model") -> None:
    """Refuse, with one clear line, a model that does not output class scores: a detector, or a backbone
    without a classifier (its outputs are features, which must not be printed or scored as classes)."""
    if callable(getattr(model, "detect", None)) or getattr(model, "task", None) == "detect":  # an SSD or its export
        raise ValueError(f"{source} is an object detector ({type(model).__name__}), not an image classifier: "
                         "use `mobilenet detect`")
    if getattr(model, "num_classes", None) == 0:
        raise ValueError(f"{source}: this model has no classifier: use embed (it is a backbone: its outputs are "
                         "features, not class scores)")


@torch.no_grad()
def predict(
    model: nn.Module,
    images: Sequence[str | Path],
    *,
    topk: int = 5,
    preprocessing: Preprocessing | None = None,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> list[dict[str, Any]]:
    """Top-k predictions per image: ``[{"path", "top": [{"label", "index", "prob"}, ...]}, ...]``.

    ``label`` is the class id stored with the weights (e.g. a WordNet id); when the weights also carry
    human-readable names (``extra["class_labels"]``), each entry has ``name`` too ("tench, Tinca tinca").

    The model runs in eval mode. An unreadable image gets ``{"path", "error"}`` instead of stopping the others
    (it is left out, never replaced). A model that is not a classifier, or whose outputs are not finite, is
    refused with a ``ValueError``.
    """
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    require_classifier(model)
    device = torch.device(device)
    pre = preprocessing or model_preprocessing(model)
    model.eval().to(device)
    results: list[dict[str, Any]] = []
    pending: list[tuple[int, torch.Tensor]] = []

    def flush() -> None:
        if not pending:
            return
        x = torch.stack([t for _, t in pending]).to(device)
        for (slot, _), top in zip(pending, decode_predictions(model(x), model, top=topk), strict=True):
            results[slot]["top"] = top
        pending.clear()

    for path in images:
        results.append({"path": str(path)})
        try:
            tensor = pre(read_image(path))
        except ImageDecodeError as e:
            results[-1]["error"] = unreadable(e)
            continue
        pending.append((len(results) - 1, tensor))
        if len(pending) == batch_size:
            flush()
    flush()
    return results


# ----------------------------------------------------------------------------- pictures and run folders


def new_run_folder(task: str, name: str = "predict", root: str | os.PathLike[str] | None = None) -> Path:
    """``<root>/<task>/<name>``, else ``<name>2``, ``<name>3`` ...: the first that does not exist, created here
    (``mkdir`` without ``exist_ok``, so two runs started at once never share one). ``root``: ``$MOBILENET_RUNS``,
    else ``runs`` in the working directory."""
    parent = Path(root or os.environ.get("MOBILENET_RUNS") or RUNS) / task
    parent.mkdir(parents=True, exist_ok=True)
    k = 1
    while True:
        folder = parent / (name if k == 1 else f"{name}{k}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:  # taken (a folder, or even a file of that name): the next number
            k += 1


def picture_targets(paths: Sequence[str | Path], folder: str | os.PathLike[str]) -> list[tuple[Path, str]]:
    """``(file, Pillow format)`` of each input's picture in ``folder``: its unique relative name
    (``output_names``) in its own format (PNG stays PNG; a suffix Pillow cannot write becomes ``.jpg``).
    Refuses, before anything is written, a picture that would overwrite one of the inputs (``folder`` is where
    they lie)."""
    formats = Image.registered_extensions()
    inputs = {Path(p).resolve() for p in paths}
    targets = []
    for path, name in zip(paths, output_names(paths), strict=True):
        target = Path(folder) / name
        fmt = formats.get(target.suffix.lower())
        if fmt not in PICTURE_FORMATS:
            target, fmt = target.with_name(target.name + ".jpg"), "JPEG"
        if target.resolve() in inputs:
            raise ValueError(f"the picture of {path} would overwrite the input {target}: write the pictures to "
                             "another folder (--out)")
        targets.append((target, fmt))
    return targets


def display_copy(image: Image.Image) -> tuple[Image.Image, int]:
    """An RGB copy to draw on, and its integer scale: small images are enlarged (nearest pixels) until the shorter
    side reaches ``DISPLAY_MIN`` or the longer one would pass ``DISPLAY_MAX``."""
    w, h = image.size
    scale = max(1, min(-(-DISPLAY_MIN // max(1, min(w, h))), DISPLAY_MAX // max(w, h, 1)))
    out = image.convert("RGB")
    return (out.resize((w * scale, h * scale), Image.NEAREST) if scale > 1 else out.copy()), scale


def caption_font(size: tuple[int, int]) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """The caption font for a picture of ``size``: about 1/32 of its shorter side, 12 to 48 pixels."""
    return ImageFont.load_default(size=max(12, min(48, round(min(size) / 32))))


def topk_caption(top: Sequence[dict[str, Any]]) -> list[str]:
    """One line per prediction: ``n01440764 (tench) 91.2%`` (the id and the first of its readable names) or
    ``cat 91.2%``."""
    lines = []
    for t in top:
        shown = str(t["label"]) if "name" not in t else f"{t['label']} ({t['name'].split(',')[0].strip()})"
        lines.append(f"{shown} {100 * t['prob']:.1f}%")
    return lines


def topk_layout(size: tuple[int, int], caption: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(picture size, caption's top-left corner) for a ``caption`` (width, height) on an image of ``size``: at the
    top left when it fits with half the height to spare, else in a band below the image, the picture widened when
    the caption is wider. The caption always lies inside the picture."""
    (w, h), (tw, th) = size, caption
    if tw <= w and th <= h // 2:
        return (w, h), (0, 0)
    return (max(w, tw), h + th), (0, h)


def draw_topk(image: Image.Image, result: dict[str, Any]) -> Image.Image:
    """The classifier's picture: ``image`` (enlarged when small, ``display_copy``) with its top-k caption
    (``result["top"]``, as ``predict`` returns it) placed by ``topk_layout``: never cut at an edge."""
    canvas, _ = display_copy(image)
    font = caption_font(canvas.size)
    lines = topk_caption(result["top"])
    pad = max(2, getattr(font, "size", 10) // 4)
    probe = ImageDraw.Draw(canvas)
    boxes = [probe.textbbox((0, 0), line, font=font) for line in lines]
    step = max(b[3] for b in boxes) + pad
    tw, th = max(b[2] for b in boxes) + 2 * pad, step * len(lines) + pad
    size, (x, y) = topk_layout(canvas.size, (tw, th))
    inside = size == canvas.size
    if not inside:  # a white band below the image, black text
        grown = Image.new("RGB", size, (255, 255, 255))
        grown.paste(canvas, (0, 0))
        canvas = grown
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((x, y, x + tw - 1, y + th - 1), fill=(0, 0, 0) if inside else (255, 255, 255))
    for k, line in enumerate(lines):
        draw.text((x + pad, y + pad + k * step), line, fill=(255, 255, 255) if inside else (0, 0, 0), font=font)
    return canvas


def write_pictures(results: Sequence[dict[str, Any]], folder: str | os.PathLike[str],
                   draw: Callable[[Image.Image, dict[str, Any]], Image.Image], *, key: str = "path",
                   json_name: str = "predictions.json") -> list[Path]:
    """Write each readable result's picture (``draw(upright image, result)``) under ``folder`` at its
    ``picture_targets`` name, and all results (unreadable images too, with their error) as ``json_name``; returns
    the pictures. ``key`` names the result's image path ("path" for classification, "image" for detection)."""
    folder = Path(folder)
    targets = picture_targets([r[key] for r in results], folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for r, (target, fmt) in zip(results, targets, strict=True):
        if "error" in r:  # left out (and listed in the JSON), never replaced by another picture
            continue
        picture = draw(read_image(r[key]), r)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(target) as f:
            picture.save(f, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
        written.append(target)
    with atomic_write(folder / json_name, "w") as f:
        dump(list(results), f, indent=1)
    return written
