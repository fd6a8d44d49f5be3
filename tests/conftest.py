"""Shared fixtures. Real-data tests read ../shared/data (override with MOBILENET_DATA) and skip without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MOBILENET_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


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
