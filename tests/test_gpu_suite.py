"""The GPU suite's dry run: every section runs on the CPU at tiny sizes, so the suite cannot rot between GPU loans.

The numbers of a dry run mean nothing; what is checked is that each section completes, writes its results and that
the report renders them. The fused Triton kernels run in Triton's interpreter when Triton is installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _cifar_zips(root: Path, train_per_class: int = 4) -> Path:
    """train.zip / test.zip in the shared copy's ImageFolder layout, a few 32x32 JPEGs per class."""
    rng = np.random.default_rng(0)
    root.mkdir()
    for split, per_class in (("train", train_per_class), ("test", 2)):
        with zipfile.ZipFile(root / f"{split}.zip", "w") as z:
            for c, name in enumerate(CLASSES):
                for i in range(per_class):
                    img = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
                    img[3 * c:3 * c + 3] = 255  # a band whose position is the class
                    buf = BytesIO()
                    Image.fromarray(img).save(buf, format="JPEG")
                    z.writestr(f"{split}/{name}/{i:04d}.jpg", buf.getvalue())
    return root


@pytest.mark.slow
def test_dry_run_runs_every_section(tmp_path: Path) -> None:
    out = tmp_path / "suite"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_suite.py"), "--dry-run", "--out", str(out),
                           "--budget-min", "20", "--cifar-data", str(_cifar_zips(tmp_path / "cifar10"))],
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    suite = json.loads((out / "suite.json").read_text())
    assert list(suite["sections"]) == ["inference", "blocks", "training", "cifar10", "detector", "profile", "bench"]
    for name, section in suite["sections"].items():
        assert section["status"] == "ok", (name, section)
        errors = section["result"].get("errors") or {}
        assert not errors, (name, errors)
    inference = suite["sections"]["inference"]["result"]
    (group,) = inference["groups"]
    assert {"ours eager", "ours fused"} <= set(group["img_per_s"])
    if inference["peer"].startswith("timm"):
        assert "timm eager" in group["img_per_s"] and "ours fused / timm eager" in group["ratios"]
    assert group["checks"]["ours fused"]["ok"] and group["checks"]["ours eager"]["ok"]
    training = suite["sections"]["training"]["result"]
    assert training["rows"]["ours triton-dw"]["img_per_s"] > 0
    assert suite["sections"]["cifar10"]["result"]["results"][0]["epochs_run"] == 1
    assert (out / "cifar10.png").is_file()
    report = (out / "suite.md").read_text()
    assert len(suite["sections"]["blocks"]["result"]["blocks"]) == 13
    for heading in ("**Inference**", "**Each depthwise separable block alone**", "**Training step**", "**CIFAR-10**",
                    "**Detector**", "**Where the time goes**"):
        assert heading in report


def test_refuses_without_a_gpu_unless_dry_run(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the real suite would run")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_suite.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    message = "gpu_suite: no CUDA device; use --dry-run to check the suite on the CPU"
    assert proc.stderr.strip().splitlines() == [message]


def test_carry_keeps_the_test_set_and_a_balanced_part_of_training(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO))
    from benchmarks.gpu_carry import pack

    data = _cifar_zips(tmp_path / "cifar10", train_per_class=20)
    full = (data / "train.zip").stat().st_size
    budget = (data / "test.zip").stat().st_size + full // 2
    got = pack(data, tmp_path / "carry", budget)
    assert got["test_images"] == 20 and got["classes"] == 10
    assert 0 < got["train_per_class"] < 20 and got["train_images"] == 10 * got["train_per_class"]
    assert got["bytes"] <= budget
    with zipfile.ZipFile(tmp_path / "carry" / "train.zip") as z:
        names = z.namelist()
        assert z.testzip() is None  # every member intact
    assert sorted({n.split("/")[1] for n in names}) == sorted(CLASSES)
    with pytest.raises(ValueError, match="does not fit"):
        pack(data, tmp_path / "none", 100)
