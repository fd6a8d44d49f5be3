"""The temporal run as a picture: per-frame detector latency and changed area, coloured by what ran."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write

_COLOURS = {"key": "#1f77b4", "changed": "#d62728", "brightness": "#9467bd", "crops": "#2ca02c", "held": "#ff7f0e",
            "static": "#7f7f7f"}


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The per-frame records of a ``detections.jsonl``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"per-frame records not found: {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_temporal(records: str | os.PathLike[str] | list[dict[str, Any]], out: str | os.PathLike[str], *,
                  title: str | None = None, credit: str | None = None) -> Path:
    """Two panels over the frames: detector latency (ms; the full detector's too when compared) and the
    changed fraction of the frame, each frame's point coloured by its mode. Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("the temporal plot needs matplotlib: pip install 'mobilenet[plot]'") from None
    rows = read_jsonl(records) if isinstance(records, (str, os.PathLike)) else list(records)
    rows = [r for r in rows if "mode" in r]
    if not rows:
        raise ValueError("no temporal records to plot (run with --temporal)")
    frames = [r["frame"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 4.6), sharex=True, height_ratios=(3, 2))
    if "full_latency_ms" in rows[0]:
        top.plot(frames, [r["full_latency_ms"] for r in rows], color="#bbbbbb", lw=0.8, label="full frame, every frame")
    for mode, colour in _COLOURS.items():
        pts = [(r["frame"], r["latency_ms"], r["changed"]) for r in rows if r["mode"] == mode]
        if pts:
            top.scatter([p[0] for p in pts], [p[1] for p in pts], s=4, color=colour, label=f"{mode} ({len(pts)})")
            bottom.scatter([p[0] for p in pts], [100 * p[2] for p in pts], s=4, color=colour)
    top.set(ylabel="detector latency (ms)", yscale="log")
    top.legend(fontsize=7, ncol=3, loc="upper right", markerscale=2)
    bottom.set(xlabel="frame", ylabel="changed area (%)")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    if title:
        top.set_title(title, fontsize=10)
    if credit:
        fig.text(0.99, 0.005, credit, ha="right", va="bottom", fontsize=6, color="#666666")
    fig.tight_layout()
    out = Path(out)
    with atomic_write(out) as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)
    return out
