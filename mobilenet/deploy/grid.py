"""``mobilenet bench --grid``: the paper's question (which α x ρ for my budget?) answered on this machine.

Latency of all 16 grid variants is measured interleaved in one run (so load on a shared machine hits
them alike) and put beside their MACs and parameters (counted by :mod:`mobilenet.profile`) and
TF-slim's published ImageNet top-1 (:data:`mobilenet.published.SLIM_V1`). The Pareto frontier is the
set of variants no other variant beats on both latency and top-1; a budget picks the most accurate
variant that fits it.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .bench import _cpu_forward, _percentile, _Skip, render_table, time_interleaved
from .paths import OURS, PATHS

# every path of ours that builds in seconds (mobilenet.deploy.paths), one at a time for all 16 variants
GRID_VARIANTS = tuple(n for n in OURS if not PATHS[n].slow)


@dataclass
class GridRow:
    """One α x resolution variant: cost, published accuracy and latency measured here (ms per batch)."""

    name: str
    width_mult: float
    resolution: int
    macs_m: float  # our count (mobilenet.profile), millions of multiply-adds per image
    params_m: float
    top1: float  # TF-slim's published ImageNet top-1 (%)
    median_ms: float
    p10_ms: float
    p90_ms: float
    pareto: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pareto_front(rows: Sequence[GridRow]) -> list[GridRow]:
    """Rows not dominated by another row (at most as slow and at least as accurate, better in one)."""
    front = []
    for r in rows:
        dominated = any(o is not r and o.median_ms <= r.median_ms and o.top1 >= r.top1
                        and (o.median_ms < r.median_ms or o.top1 > r.top1) for o in rows)
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: r.median_ms)


def run_grid(
    *,
    variant: str = "eager",
    batch_size: int = 1,
    preset: str = "tf",
    repeats: int = 20,
    warmup: int = 3,
    names: Sequence[str] | None = None,
    progress: bool = True,
) -> list[GridRow]:
    """Time each named variant (default: all 16) with one deployment path on the CPU, interleaved.

    ``preset="tf"`` by default: the architecture the published accuracies were measured on.
    """
    import tempfile

    from ..profile import profile_variant
    from ..published import SLIM_V1
    from ..zoo import create_model, list_models

    if variant not in GRID_VARIANTS:
        raise ValueError(f"grid variant must be one of {', '.join(GRID_VARIANTS)}, got {variant!r}")
    names = list(list_models()) if names is None else list(names)
    fns, models = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            torch.manual_seed(0)
            model = create_model(name, preset=preset, num_classes=1001 if preset == "tf" else 1000).eval()
            r = model.config.resolution
            x = torch.randn(batch_size, 3, r, r)
            sub = os.path.join(tmp, name)
            os.makedirs(sub)
            try:
                fn, _ = _cpu_forward(model, variant, x, sub)
            except _Skip as e:
                raise ValueError(f"grid variant {variant!r} is not available here: {e}") from None
            fn()
            fns[name], models[name] = fn, model
        times = time_interleaved(fns, repeats=repeats, warmup=warmup, progress=progress, desc="grid",
                                 min_sample_s=0.02)
    rows = []
    for name in names:
        ts, cfg = times[name], models[name].config
        prof = profile_variant(name)
        pub = SLIM_V1[name]
        rows.append(GridRow(name, cfg.width_mult, cfg.resolution, prof.macs / 1e6, prof.params / 1e6, pub.top1,
                            statistics.median(ts) * 1e3, _percentile(ts, 0.1) * 1e3, _percentile(ts, 0.9) * 1e3))
    for r in pareto_front(rows):
        r.pareto = True
    return rows


def pick_for_budget(
    rows: Sequence[GridRow],
    *,
    budget_ms: float | None = None,
    budget_macs: float | None = None,
    budget_params: float | None = None,
) -> GridRow | None:
    """The most accurate variant within every given budget (ms, million MACs, million params); None if none fits."""
    if budget_ms is None and budget_macs is None and budget_params is None:
        raise ValueError("give at least one budget (budget_ms, budget_macs or budget_params)")
    for label, b in (("budget_ms", budget_ms), ("budget_macs", budget_macs), ("budget_params", budget_params)):
        if b is not None and not b > 0:
            raise ValueError(f"{label} must be > 0, got {b}")
    fits = [r for r in rows
            if (budget_ms is None or r.median_ms <= budget_ms)
            and (budget_macs is None or r.macs_m <= budget_macs)
            and (budget_params is None or r.params_m <= budget_params)]
    return max(fits, key=lambda r: (r.top1, -r.median_ms)) if fits else None


def format_grid(rows: Sequence[GridRow], fmt: str = "table") -> str:
    """The grid as an aligned table or markdown (``*`` marks the Pareto frontier)."""
    header = ("variant", "alpha", "res", "MACs (M)", "params (M)", "slim top-1", "median ms", "p10 ms", "p90 ms",
              "pareto")
    body = [[r.name, f"{r.width_mult:g}", str(r.resolution), f"{r.macs_m:.1f}", f"{r.params_m:.2f}", f"{r.top1:.1f}",
             f"{r.median_ms:.3f}", f"{r.p10_ms:.3f}", f"{r.p90_ms:.3f}", "*" if r.pareto else ""] for r in rows]
    return render_table(header, body, fmt)


def plot_grid(rows: Sequence[GridRow], path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Latency vs published top-1 as a PNG, one point per variant, the Pareto frontier drawn as a line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("the grid plot needs matplotlib: pip install 'mobilenet[plot]'") from None
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    colors = {1.0: "tab:blue", 0.75: "tab:orange", 0.5: "tab:green", 0.25: "tab:red"}
    for alpha in sorted({r.width_mult for r in rows}, reverse=True):
        pts = [r for r in rows if r.width_mult == alpha]
        ax.scatter([r.median_ms for r in pts], [r.top1 for r in pts], color=colors.get(alpha), label=f"α = {alpha:g}")
        for r in pts:
            ax.annotate(str(r.resolution), (r.median_ms, r.top1), textcoords="offset points", xytext=(4, 3), fontsize=7)
    front = pareto_front(rows)
    ax.step([r.median_ms for r in front], [r.top1 for r in front], where="post", color="black", lw=1,
            label="Pareto frontier")
    ax.set_xscale("log")
    from matplotlib.ticker import FormatStrFormatter

    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))  # 5, 10, 20 ms rather than 5x10^0
    ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel("latency per batch on this machine (ms, median, log scale)")
    ax.set_ylabel("ImageNet top-1 (%), TF-slim published")
    ax.set_title(title or "MobileNet v1: latency vs accuracy (labels: input resolution)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
