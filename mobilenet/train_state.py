"""Resumable training state: everything needed to continue a run killed at any moment.

One state is a folder ``<run>/states/step-<global_step:08d>/`` holding

* ``model.safetensors`` (and ``ema.safetensors``): weights, written by ``mobilenet.save`` so each is
  also a loadable weights file; no pickle.
* ``optim.pt``: optimizer and grad-scaler state and RNG states, plain tensors/numbers/lists only,
  read back with ``torch.load(..., weights_only=True)`` (no code runs on load).
* ``state.json``: epoch, step in epoch, global step, best metric, the resolved config.

The folder is written under a temporary name and renamed into place, and every file inside it with
``atomic_write``, so a crash mid-save leaves either the whole new state or none of it; SIGINT/SIGTERM
arriving during the write are held until it is complete (a second Ctrl-C cannot tear a state). The
temporaries of a writer that died are removed by the next save or resume (``clean_stale_temporaries``).
The last ``keep_last`` states are kept, plus the best one (by validation top-1).

``state.json`` records the SHA-256 of every other file of the state, so ``--resume auto`` can tell a
damaged state (a disk error, a truncated or edited ``optim.pt``) from a good one: it resumes from the
newest state that verifies, saying in one warning which ones it passed over.

``lock_run_folder`` gives one run exclusive use of its folder: a lock file (``.lock``) holding the owner's
pid, host and start time, locked with ``lockf`` so that the kernel frees it when the owner dies (a stale
lock is taken over, with a warning naming the dead owner); a second run on the same folder is refused with
one line naming the owner.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import (
    WeightsFileError,
    atomic_write,
    clean_stale_temporaries,
    load_state_strict,
    make_folder,
    read,
    save,
    writer_tag,
)

STATES_DIR = "states"
LOCK_FILE = ".lock"
_STATE_NAME = re.compile(r"^step-(\d{8})$")
_REQUIRED = ("epoch", "step_in_epoch", "global_step")


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver them to the handlers that were installed
    (in the main thread; elsewhere signals cannot be handled anyway). Used around state writes, so that a
    second Ctrl-C cannot interrupt the save it is waiting for."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in held:
            handler = previous[s]
            if callable(handler):
                handler(s, None)
            elif handler == signal.SIG_DFL and s == signal.SIGINT:
                raise KeyboardInterrupt
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), s)


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
    root = make_folder(Path(run_dir) / STATES_DIR, "run folder")
    with signals_held():
        clean_stale_temporaries(run_dir)
        clean_stale_temporaries(root, recursive=True)
        final = root / f"step-{progress.global_step:08d}"
        tmp = root / f".tmp-{final.name}-{writer_tag()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        extra = {"train_config": config, "epoch": progress.epoch, "global_step": progress.global_step}
        save(model, tmp / "model.safetensors", class_names=class_names, preprocessing=preprocessing, extra=extra)
        if ema is not None:
            save(ema.module, tmp / "ema.safetensors", class_names=class_names, preprocessing=preprocessing,
                 extra=extra)
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
            "files": {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()},
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


def check_state(state_dir: str | Path) -> str | None:
    """``None`` when the state folder is complete and undamaged, else why not (one phrase).

    Every file is checked against the SHA-256 recorded in ``state.json``; a state written before checksums
    were recorded is checked by reading its files instead."""
    state_dir = Path(state_dir)
    try:
        meta = json.loads((state_dir / "state.json").read_text())
    except FileNotFoundError:
        return "no state.json"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"state.json is unreadable ({type(e).__name__})"
    if not isinstance(meta, dict) or any(not isinstance(meta.get(k), int) for k in _REQUIRED):
        return "state.json lacks epoch/step numbers"
    files = meta.get("files")
    if isinstance(files, dict):
        for name in ("model.safetensors", "optim.pt"):
            if name not in files:
                return f"state.json records no checksum for {name}"
        for name, digest in files.items():
            path = state_dir / str(name)
            if not path.is_file():
                return f"{name} is missing"
            if _sha256(path) != digest:
                return f"{name} does not match its checksum (truncated or modified)"
        return None
    try:  # an older state without checksums: the files must at least load
        read(state_dir / "model.safetensors")
        torch.load(state_dir / "optim.pt", map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        return f"{Path(str(e.filename)).name if e.filename else 'a file'} is missing"
    except Exception as e:  # noqa: BLE001 - any failure to load means "damaged"; the reason is reported
        return f"a file does not load ({type(e).__name__})"
    return None


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
    """Load a state folder into the given objects and return the progress to continue from.

    Raises:
        FileNotFoundError: ``state_dir`` is not a state folder.
        WeightsFileError: a file of the state is damaged or does not match the model/optimizer.
    """
    state_dir = Path(state_dir)
    if not (state_dir / "state.json").is_file():
        raise FileNotFoundError(f"{state_dir} is not a training state folder (no state.json)")
    problem = check_state(state_dir)
    if problem is not None:
        raise WeightsFileError(f"training state {state_dir} is damaged: {problem}")
    meta = json.loads((state_dir / "state.json").read_text())
    tensors, _ = read(state_dir / "model.safetensors")
    load_state_strict(model, tensors, str(state_dir / "model.safetensors"))
    try:
        blob = torch.load(state_dir / "optim.pt", map_location=map_location, weights_only=True)
        optimizer.load_state_dict(blob["optimizer"])
    except (RuntimeError, ValueError, KeyError, TypeError, EOFError) as e:
        raise WeightsFileError(f"{state_dir / 'optim.pt'} does not load into this optimizer ({e})") from None
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


def latest_valid_state(run_dir: str | Path) -> Path | None:
    """The newest state of a run that verifies (``check_state``), or None when the run has no state yet.

    States passed over are named in one warning. Raises ``ValueError`` when states exist but none verifies.
    """
    states = list_states(run_dir)
    passed: list[str] = []
    for state in reversed(states):
        problem = check_state(state)
        if problem is None:
            if passed:
                warnings.warn(f"resuming from {state.name}: passed over the newer damaged state(s) "
                              f"{'; '.join(passed)}", stacklevel=2)
            return state
        passed.append(f"{state.name} ({problem})")
    if states:
        raise ValueError(f"no usable training state in {Path(run_dir) / STATES_DIR}: {'; '.join(passed)}")
    return None


def find_resume(resume: str | None, run_dir: str | Path) -> Path | None:
    """``None`` -> no resume; ``"auto"`` -> the newest valid state in ``run_dir`` (None if there is none yet;
    damaged newer states are passed over with a warning); a path -> that state folder, or the newest valid
    state of the run folder it names. Stale temporaries of killed writers are removed on the way."""
    if not resume:
        return None
    if resume == "auto":
        clean_stale_temporaries(Path(run_dir) / STATES_DIR, recursive=True)
        return latest_valid_state(run_dir)
    p = Path(resume)
    if (p / "state.json").is_file():
        problem = check_state(p)
        if problem is not None:
            raise ValueError(f"--resume {resume}: this training state is damaged: {problem}")
        return p
    if p.is_dir():
        clean_stale_temporaries(p / STATES_DIR, recursive=True)
        latest = latest_valid_state(p)
        if latest is not None:
            return latest
    raise FileNotFoundError(f"--resume {resume}: no training state found there (expected a run folder or "
                            f"a {STATES_DIR}/step-NNNNNNNN folder)")


# ----------------------------------------------------------------------------- run-folder lock


class RunFolderLocked(ValueError):
    """Another live process holds the run folder."""


# Run folders locked by this process, with the owner record: POSIX locks do not conflict within one process,
# and this process must not even open its own lock file again (closing any descriptor of it drops the lock).
_HELD: dict[Path, dict[str, Any]] = {}


class RunLock:
    """An exclusive lock on a run folder, held until ``release()`` (or until the object is collected, or the
    process dies: the kernel drops the lock with its owner).

    A POSIX record lock (``lockf``), not ``flock``: forked children such as DataLoader workers do not inherit
    it, so a killed run's lingering workers cannot keep its folder locked, and it also works over NFS.
    """

    def __init__(self, run_dir: str | Path, what: str = "training") -> None:
        import fcntl

        self.path = Path(run_dir) / LOCK_FILE
        self._file = None
        make_folder(run_dir, "run folder")
        key = self.path.resolve()
        if key in _HELD:
            raise RunFolderLocked(f"{self.path.parent} is in use by {_describe(_HELD[key])} (this process): "
                                  "finish that run first, or give another --out")
        f = open(self.path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.lockf(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = _read_owner(f)
            f.close()
            raise RunFolderLocked(f"{self.path.parent} is in use by {owner}: wait for it to finish, stop it, or "
                                  "give another --out") from None
        self._file, self._key = f, key
        previous = _read_owner_dict(f)
        if previous:  # a lock file with an owner but no lock: that owner died without releasing it
            warnings.warn(f"{self.path.parent}: took over the lock of {_describe(previous)}, which is no longer "
                          "running", stacklevel=3)
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        f.seek(0)
        f.truncate()
        json.dump(owner, f)
        f.flush()
        _HELD[key] = owner

    def release(self) -> None:
        """Drop the lock; the file stays, emptied (an owner left in it means that owner died holding it)."""
        if self._file is not None:
            try:
                self._file.seek(0)
                self._file.truncate()
            except OSError:
                pass
            self._file.close()  # closing the file releases the lock
            self._file = None
            _HELD.pop(self._key, None)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def _read_owner_dict(f: Any) -> dict[str, Any] | None:
    try:
        f.seek(0)
        owner = json.loads(f.read() or "null")
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _describe(owner: dict[str, Any]) -> str:
    return (f"{owner.get('what', 'a run')} pid {owner.get('pid')} on {owner.get('host')} since "
            f"{owner.get('since', '?')}")


def _read_owner(f: Any) -> str:
    owner = _read_owner_dict(f)
    return _describe(owner) if owner else "another process"


def lock_run_folder(run_dir: str | Path, what: str = "training") -> RunLock:
    """Take the run folder for this process, or raise ``RunFolderLocked`` naming the owner (one line).

    A lock left by a process that died (SIGKILL, power loss) is free again (the kernel dropped it), so it is
    taken over, with a warning naming the dead owner. Hold the returned ``RunLock`` for the run's lifetime
    and ``release()`` it at the end.
    """
    return RunLock(run_dir, what)
