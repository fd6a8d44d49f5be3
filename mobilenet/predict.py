"""Image(s) -> top-k labels with probabilities, using the preprocessing stored with the weights."""

from __future__ import annotations

import glob as globlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from .preprocessing import Preprocessing
from .weights import weights_info

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


def expand_inputs(specs: Iterable[str]) -> list[Path]:
    """Image files named by each spec: a file, a folder (its images, recursively, sorted) or a glob."""
    out: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under folder {spec}")
            out += found
        elif globlib.has_magic(spec):
            found = sorted(Path(f) for f in globlib.glob(spec, recursive=True) if Path(f).is_file())
            if not found:
                raise FileNotFoundError(f"the pattern {spec!r} matches no files")
            out += found
        else:
            raise FileNotFoundError(f"no such image, folder or pattern: {spec}")
    return out


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

    The model runs in eval mode; an unreadable image gets ``{"path", "error"}`` instead of stopping
    the others.
    """
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    device = torch.device(device)
    pre = preprocessing or model_preprocessing(model)
    model.eval().to(device)
    results: list[dict[str, Any]] = []
    pending: list[tuple[int, torch.Tensor]] = []

    def flush() -> None:
        if not pending:
            return
        x = torch.stack([t for _, t in pending]).to(device)
        probs = model(x).float().softmax(dim=1)
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
            with Image.open(path) as im:
                tensor = pre(im)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            results[-1]["error"] = f"cannot read image: {e}"
            continue
        pending.append((len(results) - 1, tensor))
        if len(pending) == batch_size:
            flush()
    flush()
    return results
