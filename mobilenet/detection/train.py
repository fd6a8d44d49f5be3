"""Training loop for the SSD: matching + MultiBox loss, with the classification engine's pieces.

Reuses ``mobilenet.optim`` (optimizers, warm-up and schedules), ``mobilenet.train_state``
(atomic, resumable state folders, best-state tracking) and ``mobilenet.distributed`` (torchrun /
DDP). No printing policy: progress goes to tqdm and to the ``log`` callable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .. import distributed as dist_utils
from ..checkpoint import save
from ..config import coerce, flatten_tables, read_toml
from ..optim import OPTIMIZERS, SCHEDULES, build_optimizer, lr_multiplier
from ..train_state import Progress, find_resume, load_state, save_state
from ..weights import weights_info
from .augment import TrainTransform, collate
from .datasets import DetectionDataset
from .evaluate import evaluate_detector
from .loss import multibox_loss
from .matching import match_anchors
from .ssd import SSD

DATA_FORMATS = ("voc", "kitti", "coco")
METRICS = ("voc", "voc07", "kitti", "coco")
CLASSIFICATION_LOSSES = ("softmax", "focal")


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


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

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _check(self.optimizer in OPTIMIZERS,
               f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        _check(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        _check(self.classification in CLASSIFICATION_LOSSES,
               f"classification must be one of {', '.join(CLASSIFICATION_LOSSES)}, got {self.classification!r}")
        _check(self.metric in METRICS, f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        _check(self.neg_pos_ratio > 0, f"neg_pos_ratio must be > 0, got {self.neg_pos_ratio}")
        _check(0 < self.unmatched_threshold <= self.matched_threshold <= 1,
               f"need 0 < unmatched_threshold <= matched_threshold <= 1, got {self.unmatched_threshold}, "
               f"{self.matched_threshold}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DetSetup:
    """What ``detect train`` needs besides ``DetTrainConfig``: data, model and run folder.

    Together with ``DetTrainConfig``'s fields these are the keys of a detection recipe
    (``configs/ssd_voc.toml``); ``resolve_recipe`` reads one.
    """

    data: str | None = None  # VOC folder (VOCdevkit or VOC2007), KITTI training/ folder, or COCO JSON
    format: str = "voc"
    split: str = "trainval"  # VOC ImageSets/Main list; KITTI all|train|val
    val_split: str | None = None  # evaluated during training when given
    classes: str | list | None = None  # "a,b" or a TOML list; None: the format's standard classes
    image_dir: str | None = None  # COCO: folder of the images (default: beside the JSON)
    val_fraction: float = 0.2  # KITTI: fraction held out by the seeded train/val split
    weights: str | None = None  # start from this detector (e.g. the converted COCO SSD)
    backbone_weights: str | None = None  # MobileNet v1 classification weights for the backbone
    width_mult: float = 1.0  # of a new model; weights keep theirs
    image_size: int | str | None = None  # N or "HxW"; None: the weights' size, else 300
    ssdlite: bool = False  # of a new model
    out: str | None = None  # run folder
    resume: str | None = None  # "auto" or a run/state folder

    def __post_init__(self) -> None:
        _check(self.format in DATA_FORMATS, f"format must be one of {', '.join(DATA_FORMATS)}, got {self.format!r}")
        _check(self.width_mult > 0, f"width_mult must be > 0, got {self.width_mult}")
        _check(0 <= self.val_fraction < 1, f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if isinstance(self.classes, list):
            _check(all(isinstance(c, str) and c for c in self.classes),
                   f"classes must be a list of names, got {self.classes!r}")
        self.image_hw()  # validates

    def image_hw(self) -> tuple[int, int] | None:
        """``image_size`` as (height, width); None when not set."""
        if self.image_size is None:
            return None
        text = str(self.image_size)
        try:
            parts = [int(v) for v in text.lower().split("x")]
        except ValueError:
            raise ValueError(f"image_size must be N or HxW, got {text!r}") from None
        if len(parts) == 1:
            parts *= 2
        if len(parts) != 2 or min(parts) < 32:
            raise ValueError(f"image_size must be N or HxW with sides >= 32, got {text!r}")
        return parts[0], parts[1]

    def class_names(self) -> list[str] | None:
        if self.classes is None:
            return None
        names = self.classes if isinstance(self.classes, list) else self.classes.split(",")
        return [c.strip() for c in names if c.strip()]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def adopt_classes(model: SSD, class_names: list[str]) -> None:
    """Make ``model`` a detector of ``class_names`` (fine-tuning): new class predictors when the count
    differs, and the names recorded in ``model.weights_info``, so that evaluation does not map the new
    labels by the old names (``evaluate.remap_labels``, e.g. the COCO names of an imported model)."""
    if model.config.num_classes != len(class_names):
        model.reset_classes(len(class_names))
    model.weights_info = weights_info(model).replace(classes=list(class_names))  # type: ignore[assignment]


def set_input_size(model: SSD, image_size: tuple[int, int]) -> bool:
    """Train and run ``model`` at ``image_size`` (H, W) from now on; returns whether it changed.

    The convolutions apply at any size and anchors are generated for the new feature maps. Anchors
    stored in the weights (an imported .tflite's quantized table) fit only their own size: they are dropped.
    """
    size = (int(image_size[0]), int(image_size[1]))
    if size == tuple(model.config.image_size):
        return False
    if model.config.anchors_in_weights:
        del model.anchor_table  # (A, 4) for the old size
    model.config = replace(model.config, image_size=size, anchors_in_weights=False)
    return True


def resolve_recipe(recipe: str | Path | None = None, overrides: dict[str, Any] | None = None, *,
                   defaults: dict[str, Any] | None = None) -> tuple[DetSetup, DetTrainConfig]:
    """The dataclasses' defaults, then ``defaults`` (e.g. a command's own), then the TOML ``recipe``'s keys,
    then ``overrides`` (e.g. the flags given): later wins.

    Keys are ``DetSetup`` and ``DetTrainConfig`` field names; TOML tables only group them (as in
    :mod:`mobilenet.config`). ``metric`` defaults to ``kitti`` for KITTI data and ``voc`` otherwise.
    """
    setup_keys = {f.name for f in fields(DetSetup)}
    sources = [("defaults", defaults or {})]
    if recipe is not None:
        sources.append((str(recipe), flatten_tables(read_toml(recipe), str(recipe))))
    sources.append(("overrides", overrides or {}))
    merged: dict[str, Any] = {}
    for source, d in sources:
        d = {k.replace("-", "_"): v for k, v in d.items()}
        merged.update(coerce({k: v for k, v in d.items() if k in setup_keys}, source, DetSetup))
        merged.update(coerce({k: v for k, v in d.items() if k not in setup_keys}, source, DetTrainConfig))
    if "metric" not in merged:
        merged["metric"] = "kitti" if merged.get("format") == "kitti" else "voc"
    setup = DetSetup(**{k: v for k, v in merged.items() if k in setup_keys})
    return setup, DetTrainConfig(**{k: v for k, v in merged.items() if k not in setup_keys})


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
    if mcfg.num_classes != len(train_set.class_names):
        raise ValueError(f"the model detects {mcfg.num_classes} classes, the training set has "
                         f"{len(train_set.class_names)}: call adopt_classes(model, names) first")
    adopt_classes(model, train_set.class_names)  # records the names: evaluation maps labels by them
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
