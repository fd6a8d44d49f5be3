"""Training curves as a PNG (matplotlib is an optional dependency: ``pip install mobilenet[plot]``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``metrics.jsonl`` file (one JSON object per epoch)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(history: Sequence[dict[str, Any]], out: str | Path, *, title: str | None = None) -> Path:
    """Loss (train/val; a detector's box and class terms), accuracy (train/val top-1; a detector's validation mAP)
    and learning rate against epoch, in one PNG.

    Raises ImportError with an install hint when matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("training curves need matplotlib: pip install 'mobilenet[plot]'") from e
    from .checkpoint import atomic_write

    rows = [r for r in history if "epoch" in r]
    if not rows:
        raise ValueError("no epochs to plot: the metrics history is empty")
    epochs = [r["epoch"] for r in rows]

    def series(key: str, scale: float = 1.0) -> tuple[list[float], list[float]]:
        pts = [(r["epoch"], r[key] * scale) for r in rows if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for key, label in (("train_loss", "train"), ("val_loss", "validation"), ("train_box_loss", "train (boxes)"),
                       ("train_cls_loss", "train (classes)")):
        xs, ys = series(key)
        if xs:
            axes[0].plot(xs, ys, marker="o", ms=3, label=label)
    axes[0].set(title="loss", xlabel="epoch")
    losses = [r[k] for r in rows for k in ("train_loss", "val_loss") if r.get(k) is not None]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 50:  # early BN-statistics spikes dwarf the rest
        axes[0].set_yscale("log")
    accuracy_series = (("train_acc", "train top-1", 1), ("val_top1", "validation top-1", 1),
                       ("val_top5", "validation top-5", 1), ("map", "validation mAP", 100))
    for key, label, scale in accuracy_series:
        xs, ys = series(key, scale)
        if xs:
            axes[1].plot(xs, ys, marker="o", ms=3, label=label)
    axes[1].set(title="accuracy (%)", xlabel="epoch")
    xs, ys = series("lr")
    axes[2].plot(xs, ys, marker="o", ms=3)
    axes[2].set(title="learning rate (end of epoch)", xlabel="epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        if len(epochs) < 12:
            ax.set_xticks(epochs)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    with atomic_write(out) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return out
