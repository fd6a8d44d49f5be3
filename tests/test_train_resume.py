"""Nothing is lost: a run SIGKILLed mid-epoch and resumed ends with the same weights as an
uninterrupted one (deterministic mode, CPU); SIGTERM saves the state and exits cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from mobilenet.checkpoint import read
from mobilenet.cli import main
from mobilenet.engine.classify import fit
from mobilenet.recipe import TrainConfig
from mobilenet.train_state import latest_state
from tests.conftest import assert_resumed_as_uninterrupted, banded_image_folder, sigkill_after

REPO = Path(__file__).resolve().parents[1]

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


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"child exited early ({proc.returncode}): {err[-2000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"timed out waiting for {path}")
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(tmp_path):
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



# Runs a training whose os.fsync stops for good inside the write of one file of one state folder, so the parent
# can SIGKILL it in the middle of a checkpoint write (the temporary state folder and file exist, nothing is
# renamed into place yet). Real image files, DataLoader worker processes, random augmentation, dropout, EMA.
KILL_HELPER = textwrap.dedent('''
    import json, os, sys, time

    cfg_json, target, marker = sys.argv[1:4]
    real_fsync = os.fsync

    def fsync(fd):
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = ""
        if "/states/.tmp-step-00000004-" in name and os.path.basename(name).startswith(f".{target}."):
            open(marker, "w").close()
            time.sleep(600)  # the parent kills us here, mid-write
        return real_fsync(fd)

    os.fsync = fsync
    import torch

    torch.set_num_threads(1)
    from mobilenet.engine.classify import fit
    from mobilenet.recipe import TrainConfig

    fit(TrainConfig(**json.loads(cfg_json)))
''')


def _kill_config(data: Path, out: Path, **extra) -> dict:
    # 24 images, batch 8: 3 steps per epoch, 9 in all; states at steps 2, 3, 4, 6, 8, 9: the kill hits the
    # write of step 4, so the newest complete state is step 3 (the end of epoch 1)
    return dict(data=str(data), out=str(out), val_fraction=0.0, width_mult=0.25, resolution=32, dropout=0.2,
                epochs=3, batch_size=8, workers=2, augment="cifar", crop_fraction=1.0, optimizer="rmsprop_tf",
                lr=0.01, ema_decay=0.9, deterministic=True, save_every_steps=2, tensorboard=False, curves=False,
                seed=3, **extra)


def _cifar_subset(root: Path) -> Path:
    """24 real CIFAR-10 photos (8 of 3 classes) from the shared zip, as an image folder."""
    import zipfile

    from tests.conftest import shared_file

    source = shared_file("cifar10", "test.zip")
    with zipfile.ZipFile(source) as zf:
        names = sorted(n for n in zf.namelist() if n.lower().endswith((".jpg", ".png")))
        for cls in ("airplane", "cat", "ship"):
            picked = [n for n in names if f"/{cls}/" in n][:8]
            (root / cls).mkdir(parents=True)
            for n in picked:
                (root / cls / n.rsplit("/", 1)[-1]).write_bytes(zf.read(n))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("target,source", [("model.safetensors", "pngs"), ("optim.pt", "pngs"),
                                           ("state.json", "pngs"),
                                           pytest.param("optim.pt", "cifar10", marks=pytest.mark.realdata)])
def test_sigkill_during_a_checkpoint_write_with_workers_resumes_bit_identically(tmp_path, target, source):
    data = banded_image_folder(tmp_path / "imgs", seed=2) if source == "pngs" else _cifar_subset(tmp_path / "c10")
    ref = fit(TrainConfig(**_kill_config(data, tmp_path / "ref")))
    assert ref["global_step"] == 9

    run, marker = tmp_path / "killed", tmp_path / "in-the-write"
    proc = subprocess.Popen([sys.executable, "-c", KILL_HELPER, json.dumps(_kill_config(data, run)), target,
                             str(marker)], env={**_env(), "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(marker, proc, timeout=300)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    leftovers = list((run / "states").glob(".tmp-step-00000004-*"))
    assert len(leftovers) == 1 and list(leftovers[0].glob(f".{target}.*.tmp"))  # killed inside that write
    assert latest_state(run).name == "step-00000003"

    with pytest.warns(UserWarning, match=f"took over the lock of training pid {proc.pid} .*no longer running"):
        resumed = fit(TrainConfig(**_kill_config(data, run, resume="auto")))
    assert resumed["global_step"] == 9
    assert not list((run / "states").glob(".tmp-*")) and not list(run.rglob(".*.tmp"))  # the dead writer's files
    want, _ = read(ref["last"])
    got, _ = read(resumed["last"])
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    assert [r["train_loss"] for r in resumed["history"]] == [r["train_loss"] for r in ref["history"]]


@pytest.mark.slow
def test_cli_sigterm_saves_state_and_resume_auto_trains_the_rest_bit_identically(tmp_path, capsys):
    data = banded_image_folder(tmp_path / "imgs", seed=0)
    flags = ["--data", str(data), "--val-fraction", "0", "--width-mult", "0.25", "--resolution", "32",
             "--batch-size", "8", "--workers", "0", "--no-tensorboard", "--no-curves", "--augment", "cifar",
             "--crop-fraction", "1.0", "--quiet", "--deterministic", "--epochs", "10", "--seed", "1"]
    # 24 images, batch 8: 3 steps per epoch, 30 in all
    assert main(["train", *flags, "--out", str(tmp_path / "ref")]) == 0
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "mobilenet", "train", *flags, "--out", str(run)],
                            env={**_env(), "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for(run / "states" / "step-00000003" / "state.json", proc)  # epoch 1 is done: the loop runs
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM: training state saved to" in err and "Traceback" not in err
    stopped_at = json.loads((latest_state(run) / "state.json").read_text())["global_step"]
    assert 3 <= stopped_at < 30  # stopped early: the resume below has steps left to train
    capsys.readouterr()
    assert main(["train", *flags, "--out", str(run), "--resume", "auto"]) == 0
    assert "resumed from" in capsys.readouterr().out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 11)) and rows[-1]["global_step"] == 30
    want, _ = read(tmp_path / "ref" / "last.safetensors")
    got, _ = read(run / "last.safetensors")
    for k in want:
        assert torch.equal(want[k], got[k]), k


def test_a_signal_after_an_epochs_last_step_resumes_into_that_epochs_end(tmp_path):
    """SIGTERM caught after the last step of epoch 1 saves a state before the epoch's end (row, validation):
    the resume runs that end instead of skipping to epoch 2 (metrics.jsonl had lost epoch 1's row)."""
    data = banded_image_folder(tmp_path / "imgs", seed=0)
    kw = dict(data=str(data), val_data=str(data), width_mult=0.25, resolution=32, batch_size=8, workers=0,
              tensorboard=False, curves=False, augment="none", crop_fraction=1.0, deterministic=True, epochs=3,
              seed=1, device="cpu")
    from mobilenet.engine.classify import train

    signalled = []
    for ev in train(TrainConfig(**kw, out=str(tmp_path / "run"))):
        if ev["event"] == "step" and ev["epoch"] == 0 and ev["step"] == ev["steps_per_epoch"] and not signalled:
            signalled.append(ev["global_step"])
            os.kill(os.getpid(), signal.SIGTERM)  # the loop's flag: acted on right after this step
    state = json.loads((latest_state(tmp_path / "run") / "state.json").read_text())
    assert (state["epoch"], state["step_in_epoch"]) == (0, signalled[0])  # stopped before epoch 1's end
    fit(TrainConfig(**kw, out=str(tmp_path / "run"), resume="auto"))
    fit(TrainConfig(**kw, out=str(tmp_path / "ref")))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r.get("val_top1") for r in rows] == [r.get("val_top1") for r in ref]
    want, _ = read(tmp_path / "ref" / "last.safetensors")
    got, _ = read(tmp_path / "run" / "last.safetensors")
    for k in want:
        assert torch.equal(want[k], got[k]), k

