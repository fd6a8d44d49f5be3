"""Training loop for the SSD: matching + MultiBox loss, with the classification engine's pieces.

Reuses ``mobilenet.optim`` (optimizers, warm-up and schedules), ``mobilenet.train_state``
(atomic, resumable state folders, best-state tracking) and ``mobilenet.distributed`` (torchrun /
DDP). No printing policy: progress goes to tqdm and to the ``log`` callable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .. import distributed as dist_utils
from ..checkpoint import save
from ..optim import build_optimizer, lr_multiplier
from ..train_state import Progress, find_resume, load_state, save_state
from .augment import TrainTransform, collate
from .datasets import DetectionDataset
from .evaluate import evaluate_detector
from .loss import multibox_loss
from .matching import match_anchors
from .ssd import SSD


@dataclass(frozen=True)
class DetTrainConfig:
    """Hyper-parameters of a detection run; saved in every state folder."""

    epochs: int = 100
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.01
    weight_decay: float = 4e-5
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    classification: str = "softmax"  # or "focal"
    neg_pos_ratio: float = 3.0
    matched_threshold: float = 0.5
    unmatched_threshold: float = 0.5
    augment: bool = True
    metric: str = "voc"
    eval_every: int = 1  # epochs; 0 = only at the end
    workers: int = 0
    seed: int = 0
    device: str = "auto"
    grad_clip: float = 10.0  # NaN-safe: big early gradients from the box term are clipped
    # Keep BatchNorm in eval mode (running statistics, no updates). Needed when fine-tuning weights whose
    # BN was folded away (an imported .tflite: BN is identity + bias), and with small batches.
    freeze_bn: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_targets(model: SSD, targets: list[dict[str, Any]], image_size: tuple[int, int], cfg: DetTrainConfig,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Match every image's ground truth to the anchors: (B, A) labels and (B, A, 4) encoded box targets."""
    anchors = model.anchors(image_size, device=device)
    labels, boxes = [], []
    for t in targets:
        lab, box = match_anchors(t["boxes"].to(device), t["labels"].to(device) + 1, anchors,
                                 matched_threshold=cfg.matched_threshold, unmatched_threshold=cfg.unmatched_threshold,
                                 ignore_boxes=t["ignore"].to(device))
        labels.append(lab)
        boxes.append(box)
    return torch.stack(labels), model.coder.encode(torch.stack(boxes), anchors)


def _match_postprocess_to_loss(model: SSD, cfg: DetTrainConfig, log: Callable[[str], None]) -> None:
    """Scores must be read the way the loss trained them: softmax loss -> softmax scores, focal -> sigmoid.

    Matters when fine-tuning an import: TF Lite's COCO SSD scores with sigmoid, one class per anchor.
    """
    want = "softmax" if cfg.classification == "softmax" else "sigmoid"
    pp = model.config.postprocess
    if pp.score_fn != want:
        new = replace(pp, score_fn=want, nms_mode="per_class", clip_boxes=True,
                      max_detections=max(pp.max_detections, 100), score_threshold=min(pp.score_threshold, 0.01))
        model.config = replace(model.config, postprocess=new)
        log(f"post-processing set to {want} scores, per-class NMS, to match the {cfg.classification} loss")


def train_detector(
    model: SSD,
    train_set: DetectionDataset,
    val_set: DetectionDataset | None,
    cfg: DetTrainConfig,
    run_dir: str | Path,
    *,
    resume: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train ``model`` on ``train_set``; evaluate on ``val_set`` every ``eval_every`` epochs.

    Writes resumable states under ``run_dir/states`` and the final weights to ``run_dir/final.safetensors``
    (``best.safetensors`` too when validating). Returns {"history", "best_map", "final", "best", "is_main"}:
    under torchrun every rank trains, rank 0 alone evaluates, logs and writes files.
    """
    run_dir = Path(run_dir)
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    info = dist_utils.setup(cfg.device)
    device = info.device
    torch.manual_seed(cfg.seed)
    _match_postprocess_to_loss(model, cfg, log)
    mcfg = model.config
    train_set = DetectionDataset(train_set.annotations, train_set.class_names, train_set.problems,
                                 TrainTransform(mcfg.image_size, mcfg.pixel_mean, mcfg.pixel_std,
                                                seed=cfg.seed + info.rank,
                                                photometric=cfg.augment, crop=cfg.augment, flip=cfg.augment,
                                                expand_ratio=4.0 if cfg.augment else 1.0))
    if len(train_set) == 0:
        raise ValueError("the training set is empty")
    if info.distributed:
        sampler = torch.utils.data.DistributedSampler(train_set, info.world_size, info.rank, seed=cfg.seed)
    else:
        sampler = torch.utils.data.RandomSampler(train_set, generator=torch.Generator().manual_seed(cfg.seed))
    batch_size = min(cfg.batch_size, len(train_set))
    loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, sampler=sampler, drop_last=True,
                                         num_workers=cfg.workers, collate_fn=collate)
    steps_per_epoch = len(loader)
    model.to(device)
    net = dist_utils.wrap_model(model, info)
    opt = build_optimizer(model, cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    mult = lr_multiplier(cfg.schedule, steps_per_epoch=steps_per_epoch, total_epochs=cfg.epochs,
                         warmup_epochs=cfg.warmup_epochs, warmup_start=0.01)
    config = {"train": cfg.to_dict(), "model": mcfg.to_dict()}
    state = Progress()
    found = find_resume(resume, run_dir)
    if found is not None:
        import json

        saved = json.loads((found / "state.json").read_text()).get("config", {}).get("train", {})
        if saved.get("optimizer", cfg.optimizer) != cfg.optimizer:
            raise ValueError(f"cannot resume {found}: it was trained with optimizer {saved['optimizer']!r}, "
                             f"this run asks for {cfg.optimizer!r}")
        state = load_state(found, model=model, optimizer=opt, map_location=device)
        log(f"resumed from {found} (epoch {state.epoch}, step {state.global_step})")
    names = train_set.class_names
    best_path = run_dir / "best.safetensors"
    for epoch in range(state.epoch, cfg.epochs):
        if isinstance(sampler, torch.utils.data.DistributedSampler):
            sampler.set_epoch(epoch)
        net.train()
        if cfg.freeze_bn:
            for m in model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
        sums = {"loss": 0.0, "box": 0.0, "cls": 0.0, "n": 0}
        t0 = time.time()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (progress and info.is_main), leave=False)
        for images, targets in bar:
            for g in opt.param_groups:
                g["lr"] = cfg.lr * mult(state.global_step)
            images = images.to(device, non_blocking=True)
            box_pred, logits = net(images)
            labels, box_target = build_targets(model, targets, tuple(images.shape[-2:]), cfg, device)
            out = multibox_loss(box_pred, logits, box_target, labels, neg_pos_ratio=cfg.neg_pos_ratio,
                                classification=cfg.classification)
            if not torch.isfinite(out.total):
                raise FloatingPointError(f"non-finite loss at step {state.global_step} (box {out.box.item()}, "
                                         f"cls {out.cls.item()}); lower --lr")
            opt.zero_grad(set_to_none=True)
            out.total.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            state.global_step += 1
            sums["loss"] += out.total.item()
            sums["box"] += out.box.item()
            sums["cls"] += out.cls.item()
            sums["n"] += 1
            bar.set_postfix(loss=f"{sums['loss'] / sums['n']:.3f}")
        n = max(sums["n"], 1)
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": sums["loss"] / n, "box_loss": sums["box"] / n,
                                  "cls_loss": sums["cls"] / n, "lr": opt.param_groups[0]["lr"],
                                  "seconds": round(time.time() - t0, 2)}
        last = epoch + 1 == cfg.epochs
        if val_set is not None and info.is_main and (last or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0)):
            r = evaluate_detector(model, val_set, metric=cfg.metric, batch_size=batch_size, device=device)
            record["map"] = r["map"]
            if not math.isnan(r["map"]) and (state.best_metric is None or r["map"] > state.best_metric):
                state.best_metric = r["map"]
                save(model, best_path, class_names=names, extra={"epoch": epoch + 1, cfg.metric: r["map"]})
        state.history.append(record)
        state.epoch, state.step_in_epoch = epoch + 1, 0
        if info.is_main:
            log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
            save_state(run_dir, model=model, optimizer=opt, progress=state, config=config, class_names=names)
    final = run_dir / "final.safetensors"
    if info.is_main:
        save(model, final, class_names=names, extra={"history": state.history})
    dist_utils.barrier()
    if owns_group:
        dist_utils.teardown()
    return {"history": state.history, "best_map": state.best_metric, "final": final,
            "best": best_path if best_path.is_file() else None, "is_main": info.is_main}
