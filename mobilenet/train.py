"""The training loop: ``train(cfg)`` yields events (dicts), ``fit(cfg)`` runs it to the end.

No argument parsing and no printing here: the caller (``mobilenet train``, the demo, a notebook)
decides what to show. Events, in order::

    {"event": "start", ...}                       once: sizes, device, resume point
    {"event": "step", "epoch", "step", ...}       after every optimiser step (loss, acc, lr, img/s)
    {"event": "epoch", "epoch", "train_loss", ..., "val_top1", ...}   after every epoch
    {"event": "saved", "path"}                    after every training-state save
    {"event": "interrupted", "signal", "state"}   on SIGINT/SIGTERM (state saved first), then the end
    {"event": "end", "last", "best", "history"}   once, with the paths of the weights files

Run folder: ``config.json`` (resolved config), ``metrics.jsonl`` (one JSON row per epoch),
``states/step-NNNNNNNN/`` (resumable states, see ``train_state``), ``last.safetensors`` and
``best.safetensors`` (weights + metadata, loadable with ``mobilenet.load``), ``curves.png``,
``tb/`` (TensorBoard, when installed).

Exact resume: data order comes from ``ShardedBatchSampler`` (a permutation per (seed, epoch)) and
each sample's augmentation from a seed per (seed, epoch, index) (``SeededDataset``), so neither
depends on how many steps ran in this process; model, optimizer, EMA, scaler and RNG states are
restored from the state folder. In deterministic mode a run killed and resumed ends bit-identical
to an uninterrupted one on CPU (tested).
"""

from __future__ import annotations

import json
import math
import random
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import WeightsFileError, atomic_write, load_state_strict, read, save
from .distributed import (
    DistInfo,
    ShardedBatchSampler,
    all_reduce_sum,
    any_rank,
    average_buffers,
    barrier,
    setup,
    wrap_model,
)
from .evaluate import evaluate
from .model import MobileNetV1
from .optim import ModelEMA, build_optimizer, lr_multiplier
from .preprocessing import Preprocessing
from .recipe import TrainConfig
from .train_state import Progress, find_resume, load_state, lock_run_folder, save_state

METRICS_FILE = "metrics.jsonl"


# ----------------------------------------------------------------------------- data


class SeededDataset(torch.utils.data.Dataset):
    """Wraps a map-style dataset; ``ds[(epoch, i)]`` seeds Python/NumPy/torch RNGs from
    ``(seed, epoch, i)`` before ``base[i]``, so random augmentation is a pure function of the sample
    and the epoch (same result in any worker, after any resume). In the main process the global RNG
    states are saved and restored around the call, so loading does not disturb training's RNG."""

    def __init__(self, base: torch.utils.data.Dataset, seed: int) -> None:
        self.base = base
        self.seed = seed

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int] | int) -> Any:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        s = (self.seed * 1_000_003 + epoch) * 2_147_483_647 + index
        s %= 2**63
        in_worker = torch.utils.data.get_worker_info() is not None
        saved = None if in_worker else (random.getstate(), np.random.get_state(), torch.get_rng_state())
        try:
            random.seed(s)
            np.random.seed(s % 2**32)
            torch.manual_seed(s)
            return self.base[index]
        finally:
            if saved is not None:
                random.setstate(saved[0])
                np.random.set_state(saved[1])
                torch.set_rng_state(saved[2])


def preprocessing_for(cfg: TrainConfig) -> Preprocessing:
    """Evaluation preprocessing from the config; travels with the weights."""
    base = Preprocessing.tf(cfg.resolution) if cfg.normalization == "tf" else Preprocessing.imagenet(cfg.resolution)
    return Preprocessing.from_dict({**base.to_dict(), "crop_fraction": cfg.crop_fraction})


def open_datasets(cfg: TrainConfig, preprocessing: Preprocessing) -> tuple[Any, Any, list[str]]:
    """(train set, validation set or None, class names) from ``cfg.data`` / ``cfg.val_data``."""
    from .data import eval_transform, open_image_dataset, split_dataset, train_transform

    if not cfg.data:
        raise ValueError("no training data: give --data (a folder, .zip, .tar, cifar10:<path>#train or digits#train)")
    t_train, t_eval = train_transform(cfg.augment, preprocessing), eval_transform(preprocessing)
    if cfg.val_data:
        train_set = open_image_dataset(cfg.data, transform=t_train)
        val_set = open_image_dataset(cfg.val_data, transform=t_eval, class_names=train_set.class_names)
    elif cfg.val_fraction > 0:
        full = open_image_dataset(cfg.data)
        train_set, val_set = split_dataset(full, cfg.val_fraction, cfg.split_seed,
                                           train_transform=t_train, val_transform=t_eval)
    else:
        train_set, val_set = open_image_dataset(cfg.data, transform=t_train), None
    return train_set, val_set, list(train_set.class_names)


def _val_loader(val_set: Any, batch_size: int, info: DistInfo, workers: int) -> Any:
    # Each rank scores every world_size-th sample; evaluate() sums over ranks, so nothing is counted twice.
    # An unreadable validation image is left out (and listed), never scored as a copy of its neighbour.
    from .data import make_eval_loader

    return make_eval_loader(val_set, batch_size, workers=workers, pin_memory=info.device.type == "cuda",
                            indices=range(info.rank, len(val_set), info.world_size))


# ----------------------------------------------------------------------------- model


def build_model(cfg: TrainConfig, num_classes: int, class_names: Sequence[str] | None = None
                ) -> tuple[MobileNetV1, str]:
    """The model to train and a note on where its weights came from.

    With ``cfg.weights`` the architecture comes from the weights file (width, preset ... as saved)
    and every tensor is loaded; the classifier is replaced when the class count or class names
    differ from the data's (fine-tuning on a new label set).
    """
    if cfg.weights is None:
        model = MobileNetV1(width_mult=cfg.width_mult, resolution=cfg.resolution, num_classes=num_classes,
                            preset=cfg.preset, stem_stride=cfg.stem_stride, dropout=cfg.dropout)
        return model, "random initialisation"
    tensors, meta = read(cfg.weights)
    if meta.get("architecture") != "mobilenet_v1":
        raise WeightsFileError(
            f"{cfg.weights}: architecture {meta.get('architecture')!r} is not a mobilenet_v1 classifier")
    model = MobileNetV1.from_config(meta["config"])
    same_labels = model.num_classes == num_classes and (
        class_names is None or meta.get("class_names") in (None, list(class_names)))
    if same_labels:
        load_state_strict(model, tensors, str(cfg.weights))
        return model, f"all weights from {cfg.weights}"
    body = {k: v for k, v in tensors.items() if not k.startswith("classifier.")}
    model.reset_classifier(0)  # no classifier while loading the body, then a fresh one
    load_state_strict(model, body, str(cfg.weights))
    model.reset_classifier(num_classes)
    return model, f"body from {cfg.weights}, new {num_classes}-class classifier"


def set_backbone_frozen(model: MobileNetV1, frozen: bool) -> None:
    """Freeze everything but the classifier (BatchNorm statistics too: backbone BN in eval mode)."""
    for name, p in model.named_parameters():
        if not name.startswith("classifier."):
            p.requires_grad_(not frozen)
    model.stem.train(not frozen and model.training)
    model.blocks.train(not frozen and model.training)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s soft-target loss: T^2 * KL(softmax(teacher/T) || softmax(student/T)), batch mean."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                    reduction="batchmean", log_target=True) * t * t


# ----------------------------------------------------------------------------- signals


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


# ----------------------------------------------------------------------------- loop


@dataclass
class _Sums:
    """Running sums of one epoch on this rank: loss x samples, correct, samples, seconds."""

    loss: float = 0.0
    correct: float = 0.0
    count: float = 0.0
    seconds: float = 0.0

    def as_list(self) -> list[float]:
        return [self.loss, self.correct, self.count, self.seconds]

    def fold(self, acc: torch.Tensor) -> None:
        """Add device-side [loss x n, correct] sums (one host sync) and reset them."""
        loss, correct = acc.tolist()
        self.loss += loss
        self.correct += correct
        acc.zero_()


def _autocast(device: torch.device, amp: str) -> Any:
    if amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    # Rewritten whole from the saved history so a resumed run never duplicates or loses a row.
    with atomic_write(run_dir / METRICS_FILE, "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")


def _tensorboard(run_dir: Path, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: metrics.jsonl and curves.png still exist
        return None
    return SummaryWriter(str(run_dir / "tb"))


def train(
    cfg: TrainConfig,
    *,
    train_set: torch.utils.data.Dataset | None = None,
    val_set: torch.utils.data.Dataset | None = None,
    class_names: Sequence[str] | None = None,
    info: DistInfo | None = None,
) -> Iterator[dict[str, Any]]:
    """Train per ``cfg``, yielding events (see the module docstring).

    Data comes from ``train_set``/``val_set`` (map-style datasets of ``(tensor, label)``) when given,
    else from ``cfg.data``/``cfg.val_data``. ``info`` defaults to ``distributed.setup(cfg.device)``
    (a process group is joined when launched by torchrun; the caller tears it down).
    """
    info = info or setup(cfg.device)
    run_dir = Path(cfg.out)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = info.device.type == "cuda"
    torch.manual_seed(cfg.seed + info.rank)
    random.seed(cfg.seed + info.rank)
    np.random.seed((cfg.seed + info.rank) % 2**32)

    preprocessing = preprocessing_for(cfg)
    if train_set is None:
        train_set, opened_val, names = open_datasets(cfg, preprocessing)
        val_set = val_set if val_set is not None else opened_val
        class_names = class_names or names
    if class_names is None:
        class_names = getattr(train_set, "class_names", None)
    if class_names is None:
        raise ValueError("class_names are needed: pass them or use a dataset with a class_names attribute")
    class_names = list(class_names)

    # model, teacher, optimisation objects
    model, origin = build_model(cfg, len(class_names), class_names)
    model.to(info.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    teacher = None
    if cfg.teacher:
        from .checkpoint import load

        teacher = load(cfg.teacher, map_location=info.device).eval()
        if getattr(teacher, "num_classes", None) != len(class_names):
            raise ValueError(f"teacher {cfg.teacher} has {getattr(teacher, 'num_classes', '?')} classes, "
                             f"the data has {len(class_names)}")
        for p in teacher.parameters():
            p.requires_grad_(False)
    optimizer = build_optimizer(
        model, cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
        depthwise_weight_decay=cfg.depthwise_weight_decay, norm_bias_weight_decay=cfg.norm_bias_weight_decay,
        momentum=cfg.momentum, nesterov=cfg.nesterov, rmsprop_decay=cfg.rmsprop_decay, rmsprop_eps=cfg.rmsprop_eps)
    for g in optimizer.param_groups:
        g["base_lr"] = cfg.lr
    ema = ModelEMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    scaler = torch.amp.GradScaler(info.device.type) if cfg.amp == "fp16" else None

    sampler = ShardedBatchSampler(len(train_set), global_batch=cfg.batch_size, rank=info.rank,  # type: ignore[arg-type]
                                  world_size=info.world_size, accum_steps=cfg.accum_steps, seed=cfg.seed)
    steps_per_epoch = sampler.steps_per_epoch
    schedule = lr_multiplier(cfg.schedule, steps_per_epoch=steps_per_epoch, total_epochs=cfg.epochs,
                             warmup_epochs=cfg.warmup_epochs, decay_rate=cfg.decay_rate,
                             decay_epochs=cfg.decay_epochs, min_lr_ratio=cfg.min_lr_ratio)
    loader_gen = torch.Generator()  # the loader's own RNG: creating an iterator must not draw from the global one
    loader = torch.utils.data.DataLoader(
        SeededDataset(train_set, cfg.seed), batch_sampler=sampler, num_workers=cfg.workers,
        pin_memory=info.device.type == "cuda", persistent_workers=cfg.workers > 0, generator=loader_gen)
    val_loader = _val_loader(val_set, max(cfg.batch_size // info.world_size, 1), info, cfg.workers) \
        if val_set is not None and len(val_set) else None  # type: ignore[arg-type]

    # one run per folder: a second one is refused naming this one; released when this generator ends
    lock = lock_run_folder(run_dir) if info.is_main else None

    # resume
    progress = Progress()
    resume_from = find_resume(cfg.resume, run_dir)
    if resume_from is not None:
        saved_cfg = json.loads((resume_from / "state.json").read_text()).get("config", {})
        # batch_size and seed fix which samples each optimiser step sees; world size and accum_steps only
        # split a step's samples, so a run may resume on a different number of processes.
        for key in ("batch_size", "seed"):
            if key in saved_cfg and saved_cfg[key] != getattr(cfg, key):
                raise ValueError(f"cannot resume {resume_from} with {key}={getattr(cfg, key)!r}: the run was "
                                 f"started with {key}={saved_cfg[key]!r} (its position in the data depends on it)")
        progress = load_state(resume_from, model=model, optimizer=optimizer, ema=ema, scaler=scaler,
                              map_location=info.device)
        if info.rank > 0:  # rank 0's RNG was saved; give other ranks their own, still reproducible, stream
            torch.manual_seed(cfg.seed + 7919 * info.rank + progress.global_step)
        if progress.step_in_epoch >= steps_per_epoch:  # saved at the very end of an epoch
            progress.epoch, progress.step_in_epoch = progress.epoch + 1, 0
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save_json(run_dir / "config.json")
    config_dict = cfg.to_dict()
    writer = _tensorboard(run_dir, cfg.tensorboard) if info.is_main else None

    def save_now() -> Path | None:
        path = None
        if info.is_main:
            path = save_state(run_dir, model=model, optimizer=optimizer, progress=progress, config=config_dict,
                              class_names=class_names, preprocessing=preprocessing, ema=ema, scaler=scaler,
                              keep_last=cfg.keep_last)
        barrier()
        return path

    def save_weights(src: nn.Module, name: str, extra: dict[str, Any]) -> Path:
        return save(src, run_dir / name, class_names=class_names, preprocessing=preprocessing,
                    extra={"train_config": config_dict, **extra})

    yield {"event": "start", "run_dir": str(run_dir), "resumed_from": str(resume_from) if resume_from else None,
           "epoch": progress.epoch, "step": progress.step_in_epoch, "epochs": cfg.epochs,
           "steps_per_epoch": steps_per_epoch, "train_size": len(train_set),  # type: ignore[arg-type]
           "val_size": len(val_set) if val_set is not None else 0,  # type: ignore[arg-type]
           "num_classes": len(class_names), "params": sum(p.numel() for p in model.parameters()),
           "device": str(info.device), "world_size": info.world_size, "weights": origin,
           "batch_size": cfg.batch_size, "config": config_dict}

    stop = StopFlag()
    net: nn.Module | None = None
    frozen: bool | None = None
    eval_model = ema.module if ema is not None else model
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    done = False
    with stop.installed():
        while progress.epoch < cfg.epochs and not done:
            epoch = progress.epoch
            model.train()
            want_frozen = epoch < cfg.freeze_backbone_epochs
            if want_frozen != frozen or net is None:  # (re)wrap: DDP must see which parameters train
                set_backbone_frozen(model, want_frozen)
                frozen = want_frozen
                net = wrap_model(model, info, sync_bn=cfg.sync_bn)
                if cfg.compile:
                    net = torch.compile(net)
            set_backbone_frozen(model, frozen)  # re-applies BN eval mode after model.train()
            # a resumed epoch continues its running sums so its metrics cover the whole epoch
            sums = _Sums(*progress.epoch_sums) if progress.epoch_sums else _Sums()
            sampler.set_epoch(epoch, progress.step_in_epoch)
            loader_gen.manual_seed(cfg.seed * 1_000_003 + epoch)
            t_epoch = time.perf_counter()
            micro = 0
            # Loss/accuracy accumulate on the device and are read back (a host sync) only on reporting
            # steps, saves and the epoch end: a .item() per step would stall a fast GPU.
            step_acc = torch.zeros(2, dtype=torch.float64, device=info.device)  # this step: [loss x n, correct]
            epoch_acc = torch.zeros(2, dtype=torch.float64, device=info.device)  # not yet folded into sums
            step_count = 0
            optimizer.zero_grad(set_to_none=True)
            for x, y in loader:
                x = x.to(info.device, non_blocking=True)
                y = y.to(info.device, non_blocking=True)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                last_micro = (micro + 1) % cfg.accum_steps == 0
                sync = nullcontext() if last_micro or not info.distributed else net.no_sync()  # type: ignore[union-attr]
                with sync:
                    with _autocast(info.device, cfg.amp):
                        logits = net(x)  # type: ignore[misc]
                        loss = criterion(logits, y)
                        if teacher is not None:
                            with torch.no_grad():
                                t_logits = teacher(x)
                            loss = (1 - cfg.distill_alpha) * loss + cfg.distill_alpha * distillation_loss(
                                logits.float(), t_logits.float(), cfg.distill_temperature)
                    scaled = loss / cfg.accum_steps
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
                step_acc[0] += loss.detach().double() * y.numel()
                step_acc[1] += (logits.detach().argmax(1) == y).sum()
                step_count += y.numel()
                micro += 1
                if not last_micro:
                    continue
                # one optimiser step
                mult = schedule(progress.global_step)
                for g in optimizer.param_groups:
                    g["lr"] = g["base_lr"] * mult
                if scaler is not None:
                    scaler.unscale_(optimizer)
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None],
                                                   cfg.grad_clip)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update(model)
                progress.global_step += 1
                progress.step_in_epoch += 1
                epoch_acc += step_acc
                sums.count += step_count
                end_of_epoch = progress.step_in_epoch >= steps_per_epoch
                report = (progress.global_step % cfg.log_every_steps == 0 or end_of_epoch
                          or progress.step_in_epoch == 1)
                step_loss, step_correct = step_acc.tolist() if report else (math.nan, math.nan)
                elapsed = time.perf_counter() - t_epoch
                yield {"event": "step", "epoch": epoch, "step": progress.step_in_epoch,
                       "steps_per_epoch": steps_per_epoch, "global_step": progress.global_step,
                       "loss": step_loss / step_count if report else None,
                       "acc": 100.0 * step_correct / step_count if report else None,
                       "lr": cfg.lr * mult,
                       "img_per_s": sums.count * info.world_size / max(sums.seconds + elapsed, 1e-9)}
                step_acc.zero_()
                step_count = 0
                # Under DDP all ranks must agree to stop at the same step: that takes a collective, so it
                # happens on reporting steps only (a signal is acted on within log_every_steps steps).
                if (report or not info.distributed) and any_rank(stop.signal is not None, info.device):
                    sums.fold(epoch_acc)
                    progress.epoch_sums = [sums.loss, sums.correct, sums.count, sums.seconds + elapsed]
                    path = save_now()
                    if lock is not None:
                        lock.release()
                    yield {"event": "interrupted", "signal": stop.signal or signal.SIGTERM,
                           "state": str(path) if path else None, "global_step": progress.global_step}
                    if writer is not None:
                        writer.close()
                    return
                if cfg.max_steps > 0 and progress.global_step >= cfg.max_steps:
                    done = True  # the epoch-end block below validates and saves
                    break
                if cfg.save_every_steps and progress.global_step % cfg.save_every_steps == 0 and not end_of_epoch:
                    sums.fold(epoch_acc)
                    progress.epoch_sums = [sums.loss, sums.correct, sums.count, sums.seconds + elapsed]
                    path = save_now()
                    yield {"event": "saved", "path": str(path) if path else None, "global_step": progress.global_step}
            sums.fold(epoch_acc)
            sums.seconds += time.perf_counter() - t_epoch

            # epoch end: reduce train metrics over ranks, validate, save
            t = all_reduce_sum(torch.tensor(sums.as_list()[:3], dtype=torch.float64, device=info.device))
            loss_sum, correct, count = t.tolist()
            row: dict[str, Any] = {
                "epoch": epoch + 1, "global_step": progress.global_step, "lr": cfg.lr * schedule(
                    max(progress.global_step - 1, 0)),
                "train_loss": loss_sum / max(count, 1), "train_acc": 100.0 * correct / max(count, 1),
                "train_images": int(count), "epoch_seconds": sums.seconds,
                "img_per_s": count / max(sums.seconds, 1e-9),
            }
            # the ranks' BatchNorm statistics become one, so the model validated below is the model saved
            average_buffers(model)
            if ema is not None:
                average_buffers(ema.module)
            if val_loader is not None:
                res = evaluate(eval_model, val_loader, device=info.device, amp=cfg.amp,
                               channels_last=cfg.channels_last)
                row.update(val_loss=res["loss"], val_top1=res["top1"], val_top5=res["top5"], val_count=res["count"])
            if progress.step_in_epoch >= steps_per_epoch:
                progress.epoch, progress.step_in_epoch, progress.epoch_sums = epoch + 1, 0, None
            else:  # stopped by max_steps inside the epoch: a partial row now, the full one after a resume
                row["partial"] = True
                progress.epoch_sums = [sums.loss, sums.correct, sums.count, sums.seconds]
            metric = row.get("val_top1")
            improved = metric is not None and (progress.best_metric is None or metric > progress.best_metric)
            if improved:
                progress.best_metric = metric
                progress.best_state = f"step-{progress.global_step:08d}"
            progress.history = [r for r in progress.history if not (r["epoch"] == row["epoch"] and r.get("partial"))]
            progress.history.append(row)
            if info.is_main:
                _write_metrics(run_dir, progress.history)
                if improved:
                    save_weights(eval_model, "best.safetensors", {"epoch": epoch + 1, "metrics": row})
                if writer is not None:
                    for k, v in row.items():
                        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch":
                            writer.add_scalar(k, v, epoch + 1)
                    writer.flush()
            path = save_now()
            yield {"event": "epoch", **row, "best_top1": progress.best_metric}
            yield {"event": "saved", "path": str(path) if path else None, "global_step": progress.global_step}
            if done:
                break

    # end of training
    last = best = curves = None
    if info.is_main:
        last = save_weights(eval_model, "last.safetensors",
                            {"epoch": progress.epoch, "metrics": progress.history[-1] if progress.history else {}})
        best_path = run_dir / "best.safetensors"
        best = best_path if best_path.is_file() else None
        if cfg.curves and progress.history:
            try:
                from .plots import plot_curves

                curves = plot_curves(progress.history, run_dir / "curves.png")
            except ImportError:  # matplotlib missing: curves are optional
                curves = None
    if writer is not None:
        writer.close()
    barrier()
    if lock is not None:
        lock.release()
    yield {"event": "end", "last": str(last) if last else None, "best": str(best) if best else None,
           "curves": str(curves) if curves else None, "best_top1": progress.best_metric,
           "global_step": progress.global_step, "history": progress.history, "run_dir": str(run_dir)}


def fit(cfg: TrainConfig, **kwargs: Any) -> dict[str, Any]:
    """Run ``train`` to the end and return its last event (``end``, or ``interrupted``)."""
    last: dict[str, Any] = {}
    for event in train(cfg, **kwargs):
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


__all__ = ["SeededDataset", "build_model", "distillation_loss", "final_weights", "fit", "open_datasets",
           "preprocessing_for", "train"]
