"""Image(s) -> top-k labels with probabilities, using the preprocessing stored with the weights.

Inputs are files, folders (searched recursively) or globs (``expand_inputs``); each image is read by
``mobilenet.data.read_image`` (EXIF orientation applied, truncated files and decompression bombs refused), and
an unreadable one is left out of the batch and listed with its reason, never replaced by another.
``output_names`` gives every input a short, unique, relative name for files written per input (two
``x.jpg`` in different folders become ``a/x.jpg`` and ``b/x.jpg``; the suffix is kept).
"""

from __future__ import annotations

import glob as globlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data.decode import IMAGE_EXTENSIONS, ImageDecodeError, has_image_extension, read_image
from .inference import check_finite, class_names, decode_predictions, model_preprocessing, readable_names
from .preprocessing import Preprocessing

IMAGE_SUFFIXES = tuple(sorted(IMAGE_EXTENSIONS))
# Their home is mobilenet.inference; these names stay importable from here (serve, eval, the demo use them).
_label_names, _readable_names = class_names, readable_names
__all__ = ["check_finite", "expand_inputs", "model_preprocessing", "output_names", "predict", "require_classifier"]


def expand_inputs(specs: Iterable[str]) -> list[Path]:
    """Image files named by each spec: a file, a folder (its images, recursively, sorted) or a glob."""
    out: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and has_image_extension(f.name)
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
            results[-1]["error"] = f"cannot read image: {str(e).split(': ', 1)[-1]}"
            continue
        pending.append((len(results) - 1, tensor))
        if len(pending) == batch_size:
            flush()
    flush()
    return results
