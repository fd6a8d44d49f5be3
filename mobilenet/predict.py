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
from .preprocessing import Preprocessing
from .weights import weights_info

IMAGE_SUFFIXES = tuple(sorted(IMAGE_EXTENSIONS))


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


def _label_names(model: nn.Module, num_outputs: int) -> list[str]:
    names = weights_info(model).classes
    if names and len(names) == num_outputs:
        return list(names)
    return [str(i) for i in range(num_outputs)]


def _readable_names(model: nn.Module, num_outputs: int) -> list[str] | None:
    """Human-readable class names (``weights_info.class_labels``, set by the importers: "tench, Tinca tinca"
    beside the id ``n01440764``), or None when the weights carry none for every output."""
    labels = weights_info(model).class_labels
    if isinstance(labels, list) and len(labels) == num_outputs:
        return [str(x) for x in labels]
    return None


def model_preprocessing(model: nn.Module) -> Preprocessing:
    """The preprocessing stored with the model's weights, else ImageNet's at the model's resolution."""
    pre = weights_info(model).preprocessing
    if pre is not None:
        return pre
    config = getattr(model, "config", None)
    return Preprocessing.imagenet(getattr(config, "resolution", 224))


def require_classifier(model: nn.Module, source: str = "the model") -> None:
    """Refuse, with one clear line, a model that does not output class scores: a detector, or a backbone
    without a classifier (its outputs are features, which must not be printed or scored as classes)."""
    if callable(getattr(model, "detect", None)) or getattr(model, "task", None) == "detect":  # an SSD or its export
        raise ValueError(f"{source} is an object detector ({type(model).__name__}), not an image classifier: "
                         "use `mobilenet detect`")
    if getattr(model, "num_classes", None) == 0:
        raise ValueError(f"{source}: this model has no classifier (a backbone whose outputs are features): "
                         "use embed")


def check_finite(logits: torch.Tensor, source: str = "the model") -> None:
    """Refuse non-finite outputs: NaN/inf logits mean broken weights (e.g. a diverged run), never a result."""
    if not bool(torch.isfinite(logits).all()):
        raise ValueError(f"{source} produced non-finite outputs (NaN or inf): its weights are broken, e.g. by a "
                         "training run that diverged")


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
        logits = model(x).float()
        check_finite(logits)
        probs = logits.softmax(dim=1)
        names = _label_names(model, probs.shape[1])
        readable = _readable_names(model, probs.shape[1])
        k = min(topk, probs.shape[1])
        p, idx = probs.topk(k, dim=1)
        for row, (slot, _) in enumerate(pending):
            top = [{"label": names[int(i)], "index": int(i), "prob": float(q)}
                   for q, i in zip(p[row], idx[row], strict=True)]
            if readable is not None:
                for t in top:
                    t["name"] = readable[t["index"]]
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
