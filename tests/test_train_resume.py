"""Nothing is lost: a run SIGKILLed mid-epoch and resumed ends with the same weights as an
uninterrupted one (deterministic mode, CPU); SIGTERM saves the state and exits cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from mobilenet.cli import main
from mobilenet.engine.classify import fit
from mobilenet.recipe import TrainConfig
from mobilenet.train_state import latest_state
from tests.conftest import assert_resumed_as_uninterrupted, banded_image_folder, sigkill_after

# A dataset with random augmentation (noise + flip) and a model with dropout, so that exact
# resume depends on per-sample seeding and on restored RNG states, not on luck.
HELPER = textwrap.dedent('''
    import json, sys, time
    import torch

    class NoisyBands(torch.utils.data.Dataset):
        class_names = ["a", "b", "c"]

        def __init__(self, n=32):
            g = torch.Generator().manual_seed(0)
            self.y = torch.arange(n) % 3
            self.x = torch.randn(n, 3, 32, 32, generator=g) * 0.3
            for i in range(n):
                self.x[i, :, 10 * int(self.y[i]):10 * int(self.y[i]) + 10, :] += 1.5

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            x = self.x[i] + 0.1 * torch.randn(3, 32, 32)
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
            return x, self.y[i]

    if __name__ == "__main__":
        torch.set_num_threads(1)
        from mobilenet.engine.classify import train
        from mobilenet.recipe import TrainConfig

        cfg = TrainConfig(**json.loads(sys.argv[1]))
        for ev in train(cfg, train_set=NoisyBands()):
            if ev["event"] == "step" and ev["global_step"] >= 3:
                time.sleep(0.5)  # slow down after the first save so the parent kills mid-epoch
''')


@pytest.fixture(autouse=True)
def _restore_deterministic():
    # deterministic runs switch torch's global flag on; leave it as it was (conftest sets one thread)
    det = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(det)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(tmp_path):
    import json

    (tmp_path / "resume_helper.py").write_text(HELPER)
    sys.path.insert(0, str(tmp_path))
    try:
        from resume_helper import NoisyBands
    finally:
        sys.path.remove(str(tmp_path))
    common = dict(width_mult=0.25, resolution=32, dropout=0.2, epochs=2, batch_size=8, workers=0,
                  optimizer="rmsprop_tf", lr=0.01, schedule="exponential", decay_rate=0.5, decay_epochs=1.0,
                  ema_decay=0.9, deterministic=True, save_every_steps=3, tensorboard=False, curves=False, seed=5)
    # 32 images / batch 8 = 4 steps per epoch, 8 in all; states at steps 3, 4, 6, 7, 8
    ref = fit(TrainConfig(**common, out=str(tmp_path / "ref")), train_set=NoisyBands())

    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(tmp_path / "resume_helper.py"),
                             json.dumps({**common, "out": str(run)})],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sigkill_after(run / "states" / "step-00000003" / "state.json", proc, run)
    resumed = fit(TrainConfig(**common, out=str(run), resume="auto"), train_set=NoisyBands())
    assert_resumed_as_uninterrupted(ref, resumed)



@pytest.mark.slow
def test_cli_sigterm_saves_state_and_resume_auto_finishes(tmp_path, capsys):
    data = banded_image_folder(tmp_path / "imgs", seed=0)
    run = tmp_path / "run"
    flags = ["--data", str(data), "--val-fraction", "0", "--width-mult", "0.25", "--resolution", "32",
             "--batch-size", "8", "--workers", "0", "--out", str(run), "--no-tensorboard", "--no-curves",
             "--augment", "cifar", "--crop-fraction", "1.0", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "mobilenet", "train", *flags, "--epochs", "500"],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("training ")  # the start line: the loop is running
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM: training state saved to" in err and "Traceback" not in err
    assert latest_state(run) is not None
    # continue to a (shorter) end with --resume auto: same run folder, exits 0 and writes the weights
    assert main(["train", *flags, "--epochs", "1", "--resume", "auto"]) == 0
    assert (run / "last.safetensors").is_file() and (run / "metrics.jsonl").is_file()
    assert "resumed from" in capsys.readouterr().out
