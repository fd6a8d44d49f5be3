"""Nothing is lost and nothing is shared by accident: file modes follow the umask, temporaries of killed
writers are cleaned up, a damaged latest state falls back to the newest good one, a run folder has one owner,
signals cannot tear a state write, malformed weights metadata is one clear error."""

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
from safetensors.torch import save_file

from mobilenet.checkpoint import (
    STALE_AFTER_SECONDS,
    WeightsFileError,
    atomic_write,
    clean_stale_temporaries,
    load,
    save,
    writer_tag,
)
from mobilenet.cli import main
from mobilenet.model import MobileNetV1
from mobilenet.train_state import (
    Progress,
    RunFolderLocked,
    check_state,
    find_resume,
    load_state,
    lock_run_folder,
    save_state,
    signals_held,
)

REPO = Path(__file__).resolve().parents[1]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ----------------------------------------------------------------------------- file modes


@pytest.mark.parametrize("umask,expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_gives_new_files_the_umask_permissions(tmp_path, umask, expected):
    old = os.umask(umask)
    try:
        with atomic_write(tmp_path / "w.bin") as f:
            f.write(b"x")
        save(MobileNetV1(width_mult=0.25, resolution=32, num_classes=2), tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "w.bin").stat().st_mode & 0o777 == expected
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == expected


def test_atomic_write_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    target = tmp_path / "w.bin"
    target.write_bytes(b"old")
    target.chmod(0o640)
    with atomic_write(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["w.bin"]  # no temporary left beside it


# ----------------------------------------------------------------------------- stale temporaries


def test_stale_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = _dead_pid()
    host = writer_tag().rsplit("-", 1)[0]
    names = {
        f".model.safetensors.{host}-{dead}-abc123.tmp": True,   # this host, writer gone
        f".model.safetensors.{writer_tag()}-def456.tmp": False,  # this process: alive
        f".optim.pt.otherhost-{dead}-x1.tmp": False,             # another host, recent: cannot tell, kept
        ".old.safetensors.k2j3h4.tmp": False,                    # unattributed and recent: kept
        ".older.safetensors.zz9.tmp": True,                      # unattributed and old: removed
        "notes.tmp": False,                                      # not ours
    }
    for name in names:
        (tmp_path / name).write_bytes(b"partial")
    ancient = time.time() - STALE_AFTER_SECONDS - 60
    os.utime(tmp_path / ".older.safetensors.zz9.tmp", (ancient, ancient))
    states = tmp_path / "states"
    (states / f".tmp-step-00000004-{host}-{dead}").mkdir(parents=True)     # a killed state write
    (states / f".tmp-step-00000004-{host}-{dead}" / "model.safetensors").write_bytes(b"x")
    (states / f".tmp-step-00000006-{dead}").mkdir()                        # the older naming (pid only)
    (states / f".tmp-step-00000008-{writer_tag()}").mkdir()                # a live writer's
    removed = {p.name for p in clean_stale_temporaries(tmp_path, recursive=True)}
    assert removed == {n for n, stale in names.items() if stale} | {
        f".tmp-step-00000004-{host}-{dead}", f".tmp-step-00000006-{dead}"}
    assert (states / f".tmp-step-00000008-{writer_tag()}").is_dir()


# ----------------------------------------------------------------------------- resume falls back


def _state_run(tmp_path: Path, steps=(2, 4, 6)) -> tuple[Path, MobileNetV1, torch.optim.Optimizer]:
    model = MobileNetV1(width_mult=0.25, resolution=32, num_classes=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    run = tmp_path / "run"
    for step in steps:
        save_state(run, model=model, optimizer=opt, progress=Progress(epoch=0, step_in_epoch=step, global_step=step),
                   config={"batch_size": 2}, keep_last=5)
    return run, model, opt


@pytest.mark.parametrize("damage", ["truncate_optim", "edit_optim", "truncate_model", "drop_model", "bad_json"])
def test_resume_auto_falls_back_to_the_newest_valid_state(tmp_path, damage):
    run, model, opt = _state_run(tmp_path)
    latest = run / "states" / "step-00000006"
    if damage == "truncate_optim":
        data = (latest / "optim.pt").read_bytes()
        (latest / "optim.pt").write_bytes(data[: len(data) // 2])
    elif damage == "edit_optim":
        data = bytearray((latest / "optim.pt").read_bytes())
        data[-100] ^= 0xFF
        (latest / "optim.pt").write_bytes(bytes(data))
    elif damage == "truncate_model":
        (latest / "model.safetensors").write_bytes((latest / "model.safetensors").read_bytes()[:1000])
    elif damage == "drop_model":
        (latest / "model.safetensors").unlink()
    else:
        (latest / "state.json").write_text("{ not json")
    assert check_state(latest) is not None
    with pytest.warns(UserWarning, match="resuming from step-00000004: passed over .*step-00000006") as caught:
        found = find_resume("auto", run)
    assert found == run / "states" / "step-00000004" and len(caught) == 1
    progress = load_state(found, model=model, optimizer=opt)
    assert progress.global_step == 4
    with pytest.raises(WeightsFileError, match="is damaged"):
        load_state(latest, model=model, optimizer=opt)
    with pytest.raises(ValueError, match="this training state is damaged"):
        find_resume(str(latest), run)


def test_resume_auto_refuses_when_every_state_is_damaged_and_starts_fresh_without_states(tmp_path):
    run, _, _ = _state_run(tmp_path, steps=(2,))
    (run / "states" / "step-00000002" / "optim.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="no usable training state .*step-00000002 .optim.pt does not match"):
        find_resume("auto", run)
    assert find_resume("auto", tmp_path / "fresh") is None


def test_a_state_save_removes_the_leftovers_of_a_killed_save(tmp_path):
    dead = _dead_pid()
    run, model, opt = _state_run(tmp_path, steps=(2,))
    host = writer_tag().rsplit("-", 1)[0]
    leftover = run / "states" / f".tmp-step-00000004-{host}-{dead}"
    leftover.mkdir()
    (leftover / f".optim.pt.{host}-{dead}-q.tmp").write_bytes(b"half")
    (run / f".last.safetensors.{host}-{dead}-r.tmp").write_bytes(b"half")
    save_state(run, model=model, optimizer=opt, progress=Progress(global_step=4), config={})
    assert not leftover.exists() and not list(run.glob(".*.tmp"))
    assert sorted(p.name for p in (run / "states").iterdir()) == ["step-00000002", "step-00000004"]


# ----------------------------------------------------------------------------- run-folder lock

LOCKER = textwrap.dedent("""
    import sys, time
    from mobilenet.train_state import lock_run_folder, RunFolderLocked
    try:
        lock = lock_run_folder(sys.argv[1])
    except RunFolderLocked as e:
        print("refused:", e, flush=True)
        sys.exit(3)
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
""")


def _locker(run: Path, seconds: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", LOCKER, str(run), str(seconds)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_run_folder_has_one_owner_and_a_dead_owners_lock_is_taken_over(tmp_path):
    run = tmp_path / "run"
    lock = lock_run_folder(run)
    with pytest.raises(RunFolderLocked, match=f"in use by training pid {os.getpid()}"):
        lock_run_folder(run)  # a second run in this process
    other = _locker(run, 0)
    out, _ = other.communicate(timeout=60)
    assert other.returncode == 3 and f"pid {os.getpid()} on " in out and "give another --out" in out
    lock.release()
    holder = _locker(run, 60)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunFolderLocked, match=f"pid {holder.pid} "):
        lock_run_folder(run)
    holder.send_signal(signal.SIGKILL)  # dies holding the lock: the kernel drops it, the record stays
    holder.wait(timeout=30)
    with pytest.warns(UserWarning, match=f"took over the lock of training pid {holder.pid} .*no longer running"):
        lock = lock_run_folder(run)
    lock.release()
    assert (run / ".lock").read_text() == ""  # a clean release leaves no owner behind


def test_two_training_runs_on_one_folder_the_second_is_refused_in_one_line(tmp_path, capsys):
    from tests.conftest import banded_image_folder

    data = banded_image_folder(tmp_path / "imgs")
    run = tmp_path / "run"
    holder = _locker(run, 60)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["train", "--data", str(data), "--out", str(run), "--epochs", "1", "--width-mult", "0.25",
                     "--resolution", "32", "--batch-size", "8", "--workers", "0", "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"in use by training pid {holder.pid}" in err
        assert not (run / "states").exists()  # nothing of the refused run was written
    finally:
        holder.kill()
        holder.wait()


# ----------------------------------------------------------------------------- signals during a save


def test_signals_during_a_state_write_wait_for_it(tmp_path):
    received = []
    previous = signal.signal(signal.SIGINT, lambda s, f: received.append(s))
    try:
        with signals_held():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C of an impatient user
            time.sleep(0.05)
            assert received == []  # held: the write goes on
        assert received == [signal.SIGINT, signal.SIGINT]  # delivered after, in order
    finally:
        signal.signal(signal.SIGINT, previous)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with pytest.raises(KeyboardInterrupt):
        with signals_held():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            (tmp_path / "done").write_text("the block finished first")
    assert (tmp_path / "done").is_file()


# ----------------------------------------------------------------------------- malformed metadata


@pytest.mark.parametrize("meta,needle", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"architecture": "mobilenet_v1", "config": "x"}', "'config' must be an object"),
    ('{"architecture": "mobilenet_v1", "config": {"width_mult": "wide"}}', "does not build a mobilenet_v1"),
    ('{"architecture": 7, "config": {}}', "no 'architecture' name"),
    ('{"architecture": "mobilenet_v1", "config": {}, "class_names": [1, 2]}', "class_names must be strings"),
    ('{"architecture": "mobilenet_v1", "format_version": "1", "config": {}}', "format_version"),
])
def test_malformed_weights_metadata_is_one_clear_error(tmp_path, capsys, meta, needle):
    path = tmp_path / "w.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"mobilenet": meta})
    with pytest.raises(WeightsFileError, match=needle):
        load(path)
    assert main(["predict", str(path), "--weights", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and any(s in err for s in ("malformed", "not valid JSON", "not a JSON"))


def test_malformed_preprocessing_metadata_is_one_clear_error(tmp_path, capsys):
    path = save(MobileNetV1(width_mult=0.25, resolution=32, num_classes=2), tmp_path / "w.safetensors")
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["mobilenet"])
    meta["preprocessing"]["crop_fraction"] = "most"
    save_file(load_file(str(path)), str(path), metadata={"mobilenet": json.dumps(meta)})
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    assert main(["predict", str(tmp_path / "x.png"), "--weights", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "malformed metadata" in err and "crop_fraction" in err


# ----------------------------------------------------------------------------- signals to the process group


def _images(root: Path, n_per_class: int, size: int = 64) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(root / c / f"{i}.png")
    return root


def _children(pid: int) -> int:
    try:
        return sum(len(p.read_text().split()) for p in Path(f"/proc/{pid}/task").glob("*/children"))
    except OSError:
        return 0


def _group_signal_after(proc: subprocess.Popen, sig: int, ready: Path | None, delay: float, times: int = 1) -> None:
    """Signal the whole process group once ``ready`` exists (None: once DataLoader workers run), ``delay`` later."""
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < 300:
        if (ready.exists() if ready is not None else _children(proc.pid) >= 2):
            break
        time.sleep(0.05)
    time.sleep(delay)
    for _ in range(times):
        os.killpg(proc.pid, sig)  # as a terminal's Ctrl-C, `timeout` or systemd: workers get it too
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_a_signal_to_eval_with_workers_is_one_line_without_worker_tracebacks(tmp_path, sig, code, word):
    data = _images(tmp_path / "data", 150)
    w = save(MobileNetV1(width_mult=1.0, resolution=224, num_classes=2), tmp_path / "w.safetensors",
             class_names=["a", "b"])
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mobilenet", "eval", "--weights", str(w), "--data", str(data),
                             "--workers", "2", "--batch-size", "4", "--threads", "1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _group_signal_after(proc, sig, None, 1.0)  # the workers are loading: the evaluation is under way
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err and err.strip() == f"mobilenet eval: {word}", err


@pytest.mark.slow
def test_a_double_ctrl_c_during_training_with_workers_leaves_a_valid_state_and_no_traceback(tmp_path):
    from mobilenet.train_state import latest_valid_state

    data = _images(tmp_path / "data", 48, size=32)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mobilenet", "train", "--data", str(data), "--out", str(run),
                             "--epochs", "500", "--width-mult", "0.25", "--resolution", "32", "--batch-size", "8",
                             "--workers", "2", "--val-fraction", "0", "--save-every-steps", "1", "--quiet",
                             "--no-tensorboard", "--no-curves", "--threads", "1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    # two Ctrl-C 0.2 s apart while states are being written every step: the first asks for a clean stop (a
    # state save), the second must not tear that save or print a traceback from any process
    _group_signal_after(proc, signal.SIGINT, run / "states" / "step-00000003", 0.1, times=2)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode in (130, 128 + signal.SIGINT), err
    assert "Traceback" not in err, err
    assert all(line.startswith("mobilenet train:") or line.startswith("SIGINT") for line in err.strip().splitlines())
    assert latest_valid_state(run) is not None and not list((run / "states").glob(".tmp-*"))
    assert main(["train", "--data", str(data), "--out", str(run), "--epochs", "1", "--width-mult", "0.25",
                 "--resolution", "32", "--batch-size", "8", "--workers", "0", "--val-fraction", "0", "--quiet",
                 "--no-tensorboard", "--no-curves", "--resume", "auto"]) == 0
