"""Resumable training state: everything needed to continue a run killed at any moment.

One state is a folder ``<run>/states/step-<global_step:08d>/`` holding

* ``model.safetensors`` (and ``ema.safetensors``): weights, written by ``mobilenet.save`` so each is
  also a loadable weights file; no pickle.
* ``optim.pt``: optimizer and grad-scaler state and RNG states, plain tensors/numbers/lists only,
  read back with ``torch.load(..., weights_only=True)`` (no code runs on load).
* ``state.json``: epoch, step in epoch, global step, best metric, the resolved config.

The folder is written under a temporary name and renamed into place, and every file inside it with
``atomic_write``, so a crash mid-save leaves either the whole new state or none of it. The last
``keep_last`` states are kept, plus the best one (by validation top-1) named in ``best.json``.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import atomic_write, load_state_strict, read, save

STATES_DIR = "states"
_STATE_NAME = re.compile(r"^step-(\d{8})$")


@dataclass
class Progress:
    """Where the run stands. ``step_in_epoch`` optimiser steps of ``epoch`` are done."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_metric: float | None = None
    best_state: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    # running sums of the current, unfinished epoch on this rank: [loss x n, correct, n, seconds]
    epoch_sums: list[float] | None = None


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states as weights_only-loadable objects."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": [np_state[0], torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py_version, py_internal, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_internal), py_gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_states(run_dir: str | Path) -> list[Path]:
    """Complete state folders of a run, oldest first (temporary folders are ignored)."""
    root = Path(run_dir) / STATES_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STATE_NAME.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_state(run_dir: str | Path) -> Path | None:
    states = list_states(run_dir)
    return states[-1] if states else None


def save_state(
    run_dir: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    progress: Progress,
    config: dict[str, Any],
    class_names: list[str] | None = None,
    preprocessing: Any = None,
    ema: Any = None,
    scaler: Any = None,
    keep_last: int = 2,
) -> Path:
    """Write one complete state folder atomically, then prune old states (keeping the best)."""
    root = Path(run_dir) / STATES_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{progress.global_step:08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    extra = {"train_config": config, "epoch": progress.epoch, "global_step": progress.global_step}
    save(model, tmp / "model.safetensors", class_names=class_names, preprocessing=preprocessing, extra=extra)
    if ema is not None:
        save(ema.module, tmp / "ema.safetensors", class_names=class_names, preprocessing=preprocessing, extra=extra)
    blob = {
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
        "rng": rng_state(),
    }
    with atomic_write(tmp / "optim.pt") as f:
        torch.save(blob, f)
    meta = {
        "epoch": progress.epoch, "step_in_epoch": progress.step_in_epoch, "global_step": progress.global_step,
        "best_metric": progress.best_metric, "best_state": progress.best_state, "history": progress.history,
        "epoch_sums": progress.epoch_sums, "config": config,
    }
    with atomic_write(tmp / "state.json", "w") as f:  # written last: its presence marks a complete state
        json.dump(meta, f, indent=1)
    if final.exists():  # same step saved twice (e.g. a step save then the epoch end): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    prune_states(run_dir, keep_last=keep_last, keep=progress.best_state)
    return final


def prune_states(run_dir: str | Path, *, keep_last: int, keep: str | None = None) -> None:
    """Delete all but the newest ``keep_last`` states and the one named ``keep``."""
    states = list_states(run_dir)
    for p in states[:-keep_last] if keep_last > 0 else states:
        if p.name != keep:
            shutil.rmtree(p, ignore_errors=True)


def load_state(
    state_dir: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: Any = None,
    scaler: Any = None,
    map_location: str | torch.device = "cpu",
    restore_rng: bool = True,
) -> Progress:
    """Load a state folder into the given objects and return the progress to continue from."""
    state_dir = Path(state_dir)
    if not (state_dir / "state.json").is_file():
        raise FileNotFoundError(f"{state_dir} is not a training state folder (no state.json)")
    meta = json.loads((state_dir / "state.json").read_text())
    tensors, _ = read(state_dir / "model.safetensors")
    load_state_strict(model, tensors, str(state_dir / "model.safetensors"))
    blob = torch.load(state_dir / "optim.pt", map_location=map_location, weights_only=True)
    optimizer.load_state_dict(blob["optimizer"])
    if ema is not None:
        if not (state_dir / "ema.safetensors").is_file():
            raise FileNotFoundError(f"{state_dir} has no ema.safetensors but EMA is enabled (ema_decay > 0)")
        ema_tensors, _ = read(state_dir / "ema.safetensors")
        load_state_strict(ema.module, ema_tensors, str(state_dir / "ema.safetensors"))
        ema.load_state_dict(blob["ema"])
    if scaler is not None and blob.get("scaler") is not None:
        scaler.load_state_dict(blob["scaler"])
    if restore_rng:
        set_rng_state(blob["rng"])
    return Progress(epoch=meta["epoch"], step_in_epoch=meta["step_in_epoch"], global_step=meta["global_step"],
                    best_metric=meta.get("best_metric"), best_state=meta.get("best_state"),
                    history=meta.get("history", []), epoch_sums=meta.get("epoch_sums"))


def find_resume(resume: str | None, run_dir: str | Path) -> Path | None:
    """``None`` -> no resume; ``"auto"`` -> the latest state in ``run_dir`` (None if there is none yet);
    a path -> that state folder, or the latest state of the run folder it names."""
    if not resume:
        return None
    if resume == "auto":
        return latest_state(run_dir)
    p = Path(resume)
    if (p / "state.json").is_file():
        return p
    if p.is_dir():
        latest = latest_state(p)
        if latest is not None:
            return latest
    raise FileNotFoundError(f"--resume {resume}: no training state found there (expected a run folder or "
                            f"a {STATES_DIR}/step-NNNNNNNN folder)")
