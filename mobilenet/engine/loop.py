"""The training engine: one loop for every task, ``run(task, cfg)`` yields events (dicts).

No argument parsing and no printing here: the caller (``mobilenet train``, ``mobilenet detect
train``, the demo, a benchmark, a notebook) decides what to show. A :class:`Task` builds the model
and its data, computes the loss of a batch and evaluates; the engine does the rest, the same for
all: devices and DDP, AMP, EMA, gradient accumulation and clipping, learning-rate schedules,
SIGINT/SIGTERM-safe saves, exact resume, metrics, curves and TensorBoard. Events, in order::

    {"event": "start", ...}                       once: sizes, device, resume point
    {"event": "step", "epoch", "step", ...}       after every optimiser step (loss, lr, img/s, the task's sums)
    {"event": "epoch", "epoch", "train_loss", ..., <validation>}   after every epoch
    {"event": "saved", "path"}                    after every training-state save
    {"event": "interrupted", "signal", "state"}   on SIGINT/SIGTERM (state saved first), then the end
    {"event": "end", "last", "best", "history"}   once, with the paths of the weights files

Run folder: ``config.json`` (resolved config), ``metrics.jsonl`` (one JSON row per epoch),
``states/step-NNNNNNNN/`` (resumable states, see ``train_state``), ``last.safetensors`` and
``best.safetensors`` (weights + their record, loadable with ``mobilenet.load``), ``curves.png``,
``tb/`` (TensorBoard, when installed).

Exact resume: data order and augmentation come from seeds fixed by (seed, epoch, sample), see
:mod:`mobilenet.engine.data`; model, optimizer, EMA, scaler and RNG states are restored from the
state folder. In deterministic mode a run killed and resumed ends bit-identical to an uninterrupted
one on CPU (tested for classification and detection). Closing the generator early (a caller's time
budget) stops training without saving anything more.
"""

from __future__ import annotations

import json
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Generator, Hashable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from .. import strict_json
from ..checkpoint import atomic_write, save
from ..distributed import (
    DistInfo,
    ShardedBatchSampler,
    all_reduce_sum,
    any_rank,
    average_buffers,
    barrier,
    setup,
    wrap_model,
)
from ..optim import ModelEMA, build_optimizer, lr_multiplier
from ..recipe import EngineConfig
from ..train_state import Progress, RunLock, find_resume, load_state, lock_run_folder, save_state
from ..weights import Training, WeightsInfo
from .data import DeviceData, loader

METRICS_FILE = "metrics.jsonl"
# Settings a run cannot change when it resumes: they fix which samples each optimiser step sees, or the
# optimizer state's layout. World size and accum_steps only split a step's samples, so a run may resume on
# a different number of processes.
RESUME_KEYS = ("batch_size", "seed", "optimizer")


@dataclass
class Prepared:
    """What a task hands the engine before training: the model, its training data, and what travels with it."""

    model: nn.Module
    data: Any  # a map-style dataset (DataLoader path) or DeviceData (on-device path)
    batch_size: int  # the global batch per optimiser step
    info: WeightsInfo  # the record every saved weights file carries (classes, preprocessing ...)
    collate: Callable[[list[Any]], Any] | None = None
    describe: dict[str, Any] = field(default_factory=dict)  # more fields of the start event
    lr_scales: dict[str, float] = field(default_factory=dict)  # parameter-name prefix -> lr factor (optim)


class Task(Protocol):
    """What the engine trains. ``metric``: the key of :meth:`evaluate`'s row that picks ``best.safetensors``
    (higher is better); ``sums``: the names of the quantities :meth:`step` sums over a batch besides the loss,
    reported per sample (``acc`` -> the step event's ``acc``, the epoch row's ``train_acc``)."""

    metric: str
    sums: tuple[str, ...]

    def prepare(self, info: DistInfo) -> Prepared:
        """Build the model (on the CPU) and open the data."""

    def set_mode(self, model: nn.Module, epoch: int) -> Hashable:
        """After ``model.train()``: put fixed parts in eval mode for ``epoch``; returns which parameters train
        (the engine re-wraps the model for DDP when it changes)."""

    def step(self, net: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, int,
                                                                           dict[str, torch.Tensor]]:
        """(mean loss to minimise, samples in the batch, detached sums over the batch named by ``sums``)."""

    def evaluate(self, model: nn.Module, info: DistInfo) -> dict[str, Any] | None:
        """Validation metrics for the epoch's row (None: no validation data, or not on this rank)."""


class StopFlag:
    """SIGINT/SIGTERM set a flag that the loop checks after every step; a second SIGINT aborts at once."""

    def __init__(self) -> None:
        self.signal: int | None = None

    @contextmanager
    def installed(self) -> Iterator[StopFlag]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum: int, frame: Any) -> None:
            if self.signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.signal = signum

        for s in previous:
            signal.signal(s, handler)
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


@dataclass
class _Sums:
    """Running sums of one epoch on this rank: loss x samples, the task's sums, samples, seconds."""

    values: list[float]  # [loss x n, *task sums]
    count: float = 0.0
    seconds: float = 0.0

    def as_list(self) -> list[float]:  # the layout of Progress.epoch_sums
        return [*self.values, self.count, self.seconds]

    def fold(self, acc: torch.Tensor, *, finite: bool) -> None:
        """Add device-side sums (one host sync) and reset them.

        Every state save folds first, so with ``finite`` a loss that became non-finite between two reporting steps
        stops the run here, before its weights could be saved (under an fp16 scaler, skipped inf steps are normal).
        """
        for i, v in enumerate(acc.tolist()):
            self.values[i] += v
        acc.zero_()
        if finite and not math.isfinite(self.values[0]):
            raise FloatingPointError("non-finite loss since the last report; the last good state is kept; lower --lr")


def _autocast(device: torch.device, amp: str) -> Any:
    if amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    # Rewritten whole from the saved history so a resumed run never duplicates or loses a row.
    with atomic_write(run_dir / METRICS_FILE, "w") as f:
        for row in history:
            f.write(strict_json.dumps(row) + "\n")


def _tensorboard(run_dir: Path, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: metrics.jsonl and curves.png still exist
        return None
    return SummaryWriter(str(run_dir / "tb"))


def _seed(cfg: EngineConfig, info: DistInfo) -> None:
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = info.device.type == "cuda"
    torch.manual_seed(cfg.seed + info.rank)
    random.seed(cfg.seed + info.rank)
    np.random.seed((cfg.seed + info.rank) % 2**32)


def _resume_point(cfg: EngineConfig, run_dir: Path) -> Path | None:
    found = find_resume(cfg.resume, run_dir)
    if found is not None:
        saved = json.loads((found / "state.json").read_text()).get("config", {})
        for key in RESUME_KEYS:
            if key in saved and saved[key] != getattr(cfg, key):
                raise ValueError(f"cannot resume {found} with {key}={getattr(cfg, key)!r}: the run was started "
                                 f"with {key}={saved[key]!r} (its position in the data depends on it)")
    return found


@dataclass
class _Run:
    """One run on this rank: what :func:`_setup` builds, and the steps of the algorithm as methods."""

    task: Task
    cfg: EngineConfig
    info: DistInfo
    run_dir: Path
    prep: Prepared
    model: nn.Module
    optimizer: torch.optim.Optimizer
    ema: ModelEMA | None
    scaler: torch.amp.GradScaler | None
    sampler: ShardedBatchSampler
    schedule: Callable[[int], float]  # global step -> lr multiplier
    batches: Callable[[], Iterator[Any]]  # this epoch's micro-batches, in the sampler's order
    loader_gen: torch.Generator | None  # the DataLoader's generator (None on the on-device path)
    config: dict[str, Any]  # cfg as saved in every state and weights file
    progress: Progress = field(default_factory=Progress)
    resume_from: Path | None = None
    lock: RunLock | None = None  # the run folder's lock (main rank)
    writer: Any = None  # TensorBoard's SummaryWriter (main rank, when enabled and installed)
    net: nn.Module | None = None  # the model as trained: DDP-wrapped and/or compiled
    trainable: Hashable = None  # what the task's set_mode said trains when net was wrapped
    done: bool = False  # max_steps reached

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    @property
    def n_sums(self) -> int:  # the loss and the task's sums
        return 1 + len(self.task.sums)

    @property
    def eval_model(self) -> nn.Module:  # validated and saved as weights
        return self.ema.module if self.ema is not None else self.model

    def open(self) -> None:
        """Take the run folder: its lock, the resume point, config.json and TensorBoard."""
        cfg, info = self.cfg, self.info
        # one run per folder: a second one is refused naming this one; released when run() ends
        self.lock = lock_run_folder(self.run_dir) if info.is_main else None
        try:
            self.resume_from = _resume_point(cfg, self.run_dir)
            if self.resume_from is not None:
                self.progress = load_state(self.resume_from, model=self.model, optimizer=self.optimizer,
                                           ema=self.ema, scaler=self.scaler, map_location=info.device)
        except BaseException:
            self.release()
            raise
        if self.resume_from is not None:
            if info.rank > 0:  # rank 0's RNG was saved; give other ranks their own, still reproducible, stream
                torch.manual_seed(cfg.seed + 7919 * info.rank + self.progress.global_step)
            # a state saved by a signal after an epoch's last step (step_in_epoch == steps_per_epoch) resumes into
            # that epoch with no step left: its end (row, validation, save) runs then, so no epoch's row is lost
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cfg.save_json(self.run_dir / "config.json")
        self.writer = _tensorboard(self.run_dir, cfg.tensorboard) if info.is_main else None

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def close(self) -> None:
        """On every way out of :func:`run`: an exception, the generator closed, the end."""
        if self.writer is not None:
            self.writer.close()
        self.release()

    def start_event(self) -> dict[str, Any]:
        p, info = self.progress, self.info
        return {"event": "start", "run_dir": str(self.run_dir),
                "resumed_from": str(self.resume_from) if self.resume_from else None,
                "epoch": p.epoch, "step": p.step_in_epoch, "epochs": self.cfg.epochs,
                "steps_per_epoch": self.steps_per_epoch, "train_size": len(self.prep.data),
                "params": sum(q.numel() for q in self.model.parameters()), "device": str(info.device),
                "world_size": info.world_size, "batch_size": self.prep.batch_size, "config": self.config,
                **self.prep.describe}

    def save_state(self) -> Path | None:
        """A resumable state (main rank; None elsewhere), then a barrier so no rank runs ahead of the save."""
        path = None
        if self.info.is_main:
            record = self.prep.info
            path = save_state(self.run_dir, model=self.model, optimizer=self.optimizer, progress=self.progress,
                              config=self.config, class_names=record.classes, preprocessing=record.preprocessing,
                              ema=self.ema, scaler=self.scaler, keep_last=self.cfg.keep_last)
        barrier()
        return path

    def saved_event(self, path: Path | None) -> dict[str, Any]:
        return {"event": "saved", "path": str(path) if path else None, "global_step": self.progress.global_step}

    def save_weights(self, name: str, metrics: dict[str, Any]) -> Path:
        """The validated model (the EMA when there is one) with its record and this point of training."""
        training = Training(config=self.config, epoch=self.progress.epoch, global_step=self.progress.global_step,
                            metrics=metrics)
        return save(self.eval_model, self.run_dir / name, info=replace(self.prep.info, training=training))

    def begin_epoch(self, epoch: int) -> tuple[nn.Module, _Sums]:
        """Train mode and the net for ``epoch``, its sums so far, the data order from where it stopped."""
        self.model.train()
        mode = self.task.set_mode(self.model, epoch)
        if mode != self.trainable or self.net is None:  # (re)wrap: DDP must see which parameters train
            self.trainable = mode
            self.net = wrap_model(self.model, self.info, sync_bn=self.cfg.sync_bn)
            if self.cfg.compile:
                self.net = torch.compile(self.net)
        # a resumed epoch continues its running sums so its metrics cover the whole epoch
        saved = self.progress.epoch_sums
        sums = _Sums(list(saved[:-2]), *saved[-2:]) if saved else _Sums([0.0] * self.n_sums)
        self.sampler.set_epoch(epoch, self.progress.step_in_epoch)
        if self.loader_gen is not None:
            self.loader_gen.manual_seed(self.cfg.seed * 1_000_003 + epoch)
        return self.net, sums

    def backward(self, net: nn.Module, batch: Any, acc: torch.Tensor, *, last_micro: bool) -> int:
        """Loss and gradients of one micro-batch, its sums added to ``acc`` on the device; returns its samples.
        Under DDP the gradients are all-reduced on a step's last micro-batch only."""
        info, cfg, scaler = self.info, self.cfg, self.scaler
        sync = nullcontext() if last_micro or not info.distributed else net.no_sync()  # type: ignore[operator]
        with sync:
            with _autocast(info.device, cfg.amp):
                loss, n, batch_sums = self.task.step(net, batch, info.device)
            scaled = loss / cfg.accum_steps
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        acc[0] += loss.detach().double() * n
        for i, name in enumerate(self.task.sums, start=1):
            acc[i] += batch_sums[name].double()
        return n

    def optimizer_step(self) -> float:
        """One optimiser step on the accumulated gradients (lr from the schedule, clipping, AMP, EMA); returns the
        lr multiplier it used."""
        cfg, optimizer, scaler = self.cfg, self.optimizer, self.scaler
        mult = self.schedule(self.progress.global_step)
        for g in optimizer.param_groups:
            g["lr"] = cfg.lr * mult * g.get("lr_scale", 1.0)
        if scaler is not None:
            scaler.unscale_(optimizer)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.grad is not None], cfg.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        self.progress.global_step += 1
        self.progress.step_in_epoch += 1
        return mult

    def optimizer_steps(self, net: nn.Module, acc: torch.Tensor) -> Iterator[tuple[int, float]]:
        """This epoch's micro-batches, accum_steps per optimiser step; after each step yields (its samples, its lr
        multiplier), its sums in ``acc`` (which the caller zeroes)."""
        micro = count = 0
        self.optimizer.zero_grad(set_to_none=True)
        for batch in self.batches():
            micro += 1
            last_micro = micro % self.cfg.accum_steps == 0
            count += self.backward(net, batch, acc, last_micro=last_micro)
            if last_micro:
                yield count, self.optimizer_step()
                count = 0

    def step_event(self, epoch: int, values: list[float] | None, count: int, mult: float,
                   img_per_s: float) -> dict[str, Any]:
        """``values``: the step's sums (None on a step that does not report: no host sync, None means)."""
        means = [v / count for v in values] if values is not None else [None] * self.n_sums
        p = self.progress
        return {"event": "step", "epoch": epoch, "step": p.step_in_epoch, "steps_per_epoch": self.steps_per_epoch,
                "global_step": p.global_step, "loss": means[0], **dict(zip(self.task.sums, means[1:], strict=True)),
                "lr": self.cfg.lr * mult, "img_per_s": img_per_s}

    def save_mid_epoch(self, sums: _Sums, pending: torch.Tensor, seconds: float) -> Path | None:
        sums.fold(pending, finite=self.scaler is None)
        self.progress.epoch_sums = [*sums.values, sums.count, sums.seconds + seconds]
        return self.save_state()

    def train_epoch(self, stop: StopFlag) -> Generator[dict[str, Any], None, _Sums | None]:
        """The optimiser steps of this epoch (its rest, when resumed), yielding step and saved events; returns the
        epoch's sums, or None when a signal stopped the run (state saved, ``interrupted`` yielded)."""
        cfg, info, progress = self.cfg, self.info, self.progress
        epoch = progress.epoch
        net, sums = self.begin_epoch(epoch)
        t_epoch = time.perf_counter()
        # Sums accumulate on the device and are read back (a host sync) only on reporting steps,
        # saves and the epoch end: a .item() per step would stall a fast GPU.
        step_acc = torch.zeros(self.n_sums, dtype=torch.float64, device=info.device)  # this step's sums
        epoch_acc = torch.zeros(self.n_sums, dtype=torch.float64, device=info.device)  # not yet folded
        for count, mult in self.optimizer_steps(net, step_acc):
            epoch_acc += step_acc
            sums.count += count
            end_of_epoch = progress.step_in_epoch >= self.steps_per_epoch
            report = progress.global_step % cfg.log_every_steps == 0 or end_of_epoch or progress.step_in_epoch == 1
            values = step_acc.tolist() if report else None
            if values is not None and self.scaler is None and not math.isfinite(values[0]):
                raise FloatingPointError(f"non-finite loss at step {progress.global_step}; lower --lr")
            elapsed = time.perf_counter() - t_epoch
            yield self.step_event(epoch, values, count, mult,
                                  sums.count * info.world_size / max(sums.seconds + elapsed, 1e-9))
            step_acc.zero_()
            # Under DDP all ranks must agree to stop at the same step: that takes a collective, so it
            # happens on reporting steps only (a signal is acted on within log_every_steps steps).
            if (report or not info.distributed) and any_rank(stop.signal is not None, info.device):
                path = self.save_mid_epoch(sums, epoch_acc, elapsed)
                self.release()
                yield {"event": "interrupted", "signal": stop.signal or signal.SIGTERM,
                       "state": str(path) if path else None, "global_step": progress.global_step}
                return None
            if cfg.max_steps > 0 and progress.global_step >= cfg.max_steps:
                self.done = True  # end_epoch validates and saves
                break
            if cfg.save_every_steps and progress.global_step % cfg.save_every_steps == 0 and not end_of_epoch:
                yield self.saved_event(self.save_mid_epoch(sums, epoch_acc, elapsed))
        sums.fold(epoch_acc, finite=self.scaler is None)
        sums.seconds += time.perf_counter() - t_epoch
        return sums

    def train_row(self, epoch: int, sums: _Sums) -> dict[str, Any]:
        """The epoch's train metrics, summed over ranks."""
        totals = all_reduce_sum(torch.tensor([*sums.values, sums.count], dtype=torch.float64,
                                             device=self.info.device)).tolist()
        count = max(totals[-1], 1)
        return {
            "epoch": epoch + 1, "global_step": self.progress.global_step,
            "lr": self.cfg.lr * self.schedule(max(self.progress.global_step - 1, 0)),
            "train_loss": totals[0] / count,
            **{f"train_{k}": v / count for k, v in zip(self.task.sums, totals[1:-1], strict=True)},
            "train_images": int(totals[-1]), "epoch_seconds": sums.seconds,
            "img_per_s": totals[-1] / max(sums.seconds, 1e-9),
        }

    def record(self, row: dict[str, Any]) -> None:
        """The best metric, the history, metrics.jsonl, best.safetensors when it improved, TensorBoard."""
        progress = self.progress
        metric = row.get(self.task.metric)
        improved = metric is not None and not math.isnan(metric) and (
            progress.best_metric is None or metric > progress.best_metric)
        if improved:
            progress.best_metric = metric
            progress.best_state = f"step-{progress.global_step:08d}"
        progress.history = [r for r in progress.history if not (r["epoch"] == row["epoch"] and r.get("partial"))]
        progress.history.append(row)
        if not self.info.is_main:
            return
        _write_metrics(self.run_dir, progress.history)
        if improved:
            self.save_weights("best.safetensors", row)
        if self.writer is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch":
                    self.writer.add_scalar(k, v, row["epoch"])
            self.writer.flush()

    def end_epoch(self, sums: _Sums) -> Iterator[dict[str, Any]]:
        """The epoch's row (train metrics, validation), recorded, and a state save: the epoch and saved events."""
        cfg, progress = self.cfg, self.progress
        epoch = progress.epoch
        row = self.train_row(epoch, sums)
        # the ranks' BatchNorm statistics become one, so the model validated below is the model saved
        average_buffers(self.model)
        if self.ema is not None:
            average_buffers(self.ema.module)
        last_epoch = self.done or epoch + 1 == cfg.epochs
        if last_epoch or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
            row.update(self.task.evaluate(self.eval_model, self.info) or {})
        if progress.step_in_epoch >= self.steps_per_epoch:
            progress.epoch, progress.step_in_epoch, progress.epoch_sums = epoch + 1, 0, None
        else:  # stopped by max_steps inside the epoch: a partial row now, the full one after a resume
            row["partial"] = True
            progress.epoch_sums = sums.as_list()
        self.record(row)
        path = self.save_state()
        yield {"event": "epoch", **row, "best_metric": progress.best_metric}
        yield self.saved_event(path)

    def curves(self) -> Path | None:
        if not (self.cfg.curves and self.progress.history):
            return None
        try:
            from ..plots import plot_curves

            return plot_curves(self.progress.history, self.run_dir / "curves.png")
        except ImportError:  # matplotlib missing: curves are optional
            return None

    def end(self) -> dict[str, Any]:
        """last.safetensors and curves.png, the run folder released: the end event."""
        last = best = curves = None
        if self.info.is_main:
            last = self.save_weights("last.safetensors", self.progress.history[-1] if self.progress.history else {})
            best_path = self.run_dir / "best.safetensors"
            best = best_path if best_path.is_file() else None
            curves = self.curves()
        barrier()
        self.release()
        p = self.progress
        return {"event": "end", "last": str(last) if last else None, "best": str(best) if best else None,
                "curves": str(curves) if curves else None, "best_metric": p.best_metric,
                "metric": self.task.metric, "global_step": p.global_step, "history": p.history,
                "run_dir": str(self.run_dir)}


def _setup(task: Task, cfg: EngineConfig, info: DistInfo) -> _Run:
    """Everything one run holds, built in this order (the seeds, then the task's model and data), then the run
    folder taken (lock, resume point, config.json, TensorBoard)."""
    _seed(cfg, info)
    prep = task.prepare(info)
    model = prep.model.to(info.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(
        model, cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
        depthwise_weight_decay=cfg.depthwise_weight_decay, norm_bias_weight_decay=cfg.norm_bias_weight_decay,
        momentum=cfg.momentum, nesterov=cfg.nesterov, rmsprop_decay=cfg.rmsprop_decay, rmsprop_eps=cfg.rmsprop_eps,
        lr_scales=prep.lr_scales)
    ema = ModelEMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    scaler = torch.amp.GradScaler(info.device.type) if cfg.amp == "fp16" else None
    sampler = ShardedBatchSampler(len(prep.data), global_batch=prep.batch_size, rank=info.rank,
                                  world_size=info.world_size, accum_steps=cfg.accum_steps, seed=cfg.seed)
    schedule = lr_multiplier(cfg.schedule, steps_per_epoch=sampler.steps_per_epoch, total_epochs=cfg.epochs,
                             warmup_epochs=cfg.warmup_epochs, warmup_start=cfg.warmup_start,
                             decay_rate=cfg.decay_rate, decay_epochs=cfg.decay_epochs, min_lr_ratio=cfg.min_lr_ratio)
    if isinstance(prep.data, DeviceData):
        data = prep.data
        batches, loader_gen = (lambda: data.batches(sampler, cfg.seed)), None
    else:
        data_loader, loader_gen = loader(prep.data, sampler, seed=cfg.seed, workers=cfg.workers,
                                         pin_memory=info.device.type == "cuda", collate=prep.collate)
        batches = lambda: iter(data_loader)  # noqa: E731
    r = _Run(task=task, cfg=cfg, info=info, run_dir=Path(cfg.out), prep=prep, model=model, optimizer=optimizer,
             ema=ema, scaler=scaler, sampler=sampler, schedule=schedule, batches=batches, loader_gen=loader_gen,
             config=cfg.to_dict())
    r.open()
    return r


def run(task: Task, cfg: EngineConfig, *, info: DistInfo | None = None) -> Iterator[dict[str, Any]]:
    """Train ``task`` per ``cfg``, yielding events (see the module docstring).

    ``info`` defaults to ``distributed.setup(cfg.device)`` (a process group is joined when launched by
    torchrun; the caller tears it down).
    """
    if not cfg.out:
        raise ValueError("no run folder: give --out (or out = ... in the recipe)")
    r = _setup(task, cfg, info or setup(cfg.device))
    try:
        yield r.start_event()
        with StopFlag().installed() as stop:
            while r.progress.epoch < cfg.epochs and not r.done:
                sums = yield from r.train_epoch(stop)
                if sums is None:  # stopped by a signal: the state is saved, the interrupted event yielded
                    return
                yield from r.end_epoch(sums)
        yield r.end()
    finally:
        r.close()


def finish(events: Iterator[dict[str, Any]]) -> dict[str, Any]:
    """Run ``events`` (a training's generator) to the end and return its last event (``end``, or
    ``interrupted``)."""
    last: dict[str, Any] = {}
    for event in events:
        if event["event"] in ("end", "interrupted"):
            last = event
    return last


def final_weights(run_dir: str | Path) -> Path:
    """The weights a finished run recommends: ``best.safetensors`` if it was validated, else ``last``."""
    run_dir = Path(run_dir)
    for name in ("best.safetensors", "last.safetensors"):
        if (run_dir / name).is_file():
            return run_dir / name
    raise FileNotFoundError(f"{run_dir} holds no best.safetensors or last.safetensors: has the run finished?")
