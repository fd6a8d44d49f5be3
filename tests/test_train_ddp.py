"""`torchrun --nproc-per-node 2` on CPU (gloo) equals one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mobilenet.checkpoint import read
from mobilenet.cli import main
from tests.conftest import banded_image_folder


@pytest.mark.slow
def test_torchrun_two_gloo_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    data = banded_image_folder(tmp_path / "imgs", seed=1)
    common = ["--data", str(data), "--val-data", str(data), "--width-mult", "0.25", "--resolution", "32",
              "--epochs", "2", "--batch-size", "8", "--lr", "0.05", "--workers", "0", "--augment", "none",
              "--crop-fraction", "1.0", "--no-tensorboard", "--no-curves", "--quiet", "--device", "cpu",
              "--deterministic"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "mobilenet", "train", *common, "--out", str(tmp_path / "ddp")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("epoch 1:") == 1  # rank 0 alone prints
    assert "cpu x2" in ddp.stdout

    # One process, same global batch of 8: two micro-batches of 4 (as each rank's 4) with accumulation.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", *common, "--accum-steps", "2", "--out", str(tmp_path / "one")]) == 0
        # the same batch without the split: BatchNorm sees 8 images at once, so the result must differ
        assert main(["train", *common, "--out", str(tmp_path / "whole")]) == 0
    finally:
        torch.set_num_threads(n)

    ddp_w, _ = read(tmp_path / "ddp" / "last.safetensors")
    one_w, _ = read(tmp_path / "one" / "last.safetensors")
    whole_w, _ = read(tmp_path / "whole" / "last.safetensors")
    params = [k for k in one_w if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(params) == 83
    for k in params:
        torch.testing.assert_close(ddp_w[k], one_w[k], rtol=1e-4, atol=1e-5, msg=k)
    assert max((ddp_w[k] - whole_w[k]).abs().max().item() for k in params) > 1e-3
    # BN running statistics are per-rank under DDP (rank 0's are saved) and per-micro-batch in the
    # 1-process run, so buffers are not compared. Validation is sharded over ranks and summed:
    rows = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_count"] for r in rows] == [24, 24] and [r["train_images"] for r in rows] == [24, 24]
