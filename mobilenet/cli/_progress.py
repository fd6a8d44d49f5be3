"""Rendering the training engine's events on the terminal (`mobilenet train` and `mobilenet detect train`):
a start line, a progress bar per epoch, one line per epoch, the end; a SIGINT/SIGTERM says how to resume."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterable
from typing import Any

# how an epoch row's validation metrics read: key -> (label, format)
VALIDATION = {"val_loss": ("val loss", "{:.4f}"), "val_top1": ("top-1", "{:.2f}%"), "val_top5": ("top-5", "{:.2f}%"),
              "map": ("mAP", "{:.4f}")}
BEST = {"val_top1": "best validation top-1 {:.2f}%", "map": "best validation mAP {:.4f}"}
# the task's per-sample training sums as they read in an epoch line
SUMS = {"acc": ("acc", "{:.2f}%"), "box_loss": ("box", "{:.4f}"), "cls_loss": ("cls", "{:.4f}")}


def describe_start(ev: dict[str, Any]) -> str:
    resumed = f", resumed from {ev['resumed_from']} (epoch {ev['epoch'] + 1}, step {ev['step']})" \
        if ev["resumed_from"] else ""
    return (f"training {ev['params']:,} parameters on {ev['device']} x{ev['world_size']}: {ev['train_size']} train / "
            f"{ev['val_size']} val images, {ev['num_classes']} classes, {ev['epochs']} epochs of "
            f"{ev['steps_per_epoch']} steps (batch {ev['batch_size']}); weights: {ev['weights']}{resumed}")


def describe_epoch(ev: dict[str, Any]) -> str:
    sums = "".join(f" {label} {fmt.format(ev['train_' + k])}" for k, (label, fmt) in SUMS.items() if f"train_{k}" in ev)
    s = (f"epoch {ev['epoch']}: train loss {ev['train_loss']:.4f}{sums}"
         f" | {ev['img_per_s']:.0f} img/s, {ev['epoch_seconds']:.1f} s")
    shown = [f"{label} {fmt.format(ev[k])}" for k, (label, fmt) in VALIDATION.items() if k in ev]
    return s + (" | " + " ".join(shown) if shown else "")


def print_problems(problems: dict[str, list[str]], root: str | None) -> None:
    """A dataset's annotation problems (file:line: message), the first 20 of each split, on stderr."""
    for split, lines in problems.items():
        if not lines:
            continue
        print(f"{len(lines)} annotation problem(s) in {root} ({split}):", file=sys.stderr)
        for line in lines[:20]:
            print(f"  {line}", file=sys.stderr)
        if len(lines) > 20:
            print(f"  ... and {len(lines) - 20} more", file=sys.stderr)


def follow(events: Iterable[dict[str, Any]], *, show: bool, quiet: bool, out: str) -> int:
    """Print ``events`` (on the main rank: ``show``) and return the exit code: 0, or 128 + the signal."""
    from tqdm import tqdm

    bar = None
    code = 0
    try:
        for ev in events:
            kind = ev["event"]
            if not show:
                continue
            if kind == "start":
                print_problems(ev.get("problems") or {}, ev["config"].get("data"))
                print(describe_start(ev), flush=True)
                for note in ev.get("notes") or ():
                    print(note, flush=True)
            elif kind == "step" and not quiet:
                if bar is None:
                    bar = tqdm(total=ev["steps_per_epoch"], initial=ev["step"] - 1, desc=f"epoch {ev['epoch'] + 1}",
                               unit="step", dynamic_ncols=True, leave=False, file=sys.stderr)
                if ev["loss"] is not None:  # read back every log_every_steps steps
                    shown = {k: f"{ev[k]:.3f}" for k in ("loss", *SUMS) if ev.get(k) is not None}
                    bar.set_postfix(**shown, lr=f"{ev['lr']:.2e}", img_s=f"{ev['img_per_s']:.0f}", refresh=False)
                bar.update(1)
            elif kind == "epoch":
                if bar is not None:
                    bar.close()
                    bar = None
                print(describe_epoch(ev), flush=True)
            elif kind == "interrupted":
                name = signal.Signals(ev["signal"]).name
                print(f"{name}: training state saved to {ev['state']}; continue with --resume auto --out {out}",
                      file=sys.stderr)
                code = 128 + int(ev["signal"])
            elif kind == "end":
                best = f", {BEST[ev['metric']].format(ev['best_metric'])}" if ev["best_metric"] is not None else ""
                print(f"done: {ev['global_step']} steps{best}; weights: {ev['best'] or ev['last']}; "
                      f"metrics: {ev['run_dir']}/metrics.jsonl" + (f"; curves: {ev['curves']}" if ev["curves"] else ""))
    finally:
        if bar is not None:
            bar.close()
    return code
