"""Shared fixtures. Real-data tests read ../shared/data (override with MOBILENET_DATA) and skip without it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MOBILENET_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    # Tiny models on a 2-core machine: one thread avoids OpenMP oversubscription, measured 5-20x slower
    # with 2 threads while other processes (torchrun workers, DataLoader workers) share the cores.
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def shared_data() -> Path:
    """The shared real-data folder; skips the test when it is absent (as on a user's machine)."""
    if not DATA.is_dir():
        pytest.skip(f"real data folder not found: {DATA} (set MOBILENET_DATA)")
    return DATA


def shared_file(*parts: str) -> Path:
    """A file under the shared data folder, or skip the calling test with the reason."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data file not found: {path} (set MOBILENET_DATA)")
    return path


def banded_image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog", "fox"), per_class: int = 8,
                        seed: int = 0) -> Path:
    """root/<class>/<i>.png, 32x32 noise with a bright band whose position gives the class (learnable)."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            arr = (rng.random((32, 32, 3)) * 80).astype(np.uint8)
            arr[10 * c:10 * c + 10] += 150
            Image.fromarray(arr).save(root / name / f"{i}.png")
    return root


def sigkill_after(path: Path, proc: Any, run: Path, timeout: float = 180.0) -> None:
    """SIGKILL the training child ``proc`` once ``path`` (its first saved state) exists; check it died mid-run
    (its latest state is step 3 or 4 of the 8-step runs the resume tests use)."""
    import signal
    import time

    from mobilenet.train_state import latest_state

    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child exited early ({proc.returncode}): {proc.communicate()[1][-2000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"timed out waiting for {path}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    state = latest_state(run)
    assert state is not None and state.name in ("step-00000003", "step-00000004")  # killed mid-run


def assert_resumed_as_uninterrupted(ref: dict, resumed: dict) -> None:
    """A run killed and resumed ended as the uninterrupted one: same steps, bit-identical weights, same losses."""
    from mobilenet.checkpoint import read

    assert resumed["global_step"] == ref["global_step"] == 8
    want, _ = read(ref["last"])
    got, _ = read(resumed["last"])
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    # the per-epoch training metrics survive the kill too
    assert [r["train_loss"] for r in resumed["history"]] == pytest.approx([r["train_loss"] for r in ref["history"]])
