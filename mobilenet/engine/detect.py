"""SSD detection as a task of the engine: ``train_detector(cfg)`` yields the engine's events.

The task opens a VOC/KITTI/COCO split, builds the SSD (new, from a detector's weights or an imported
``detect.tflite``, optionally with a classifier's backbone), matches ground truth to anchors and
computes the MultiBox loss, and validates mAP. The engine gives it AMP, EMA, exact resume,
SIGTERM-safe saves and the run folder of classification (``config.json``, ``metrics.jsonl``,
``curves.png``, ``states/``, ``last``/``best.safetensors``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..checkpoint import load_state_strict, read
from ..detection.augment import TrainTransform, collate
from ..detection.datasets import DetectionDataset, read_dataset
from ..detection.evaluate import evaluate_detector
from ..detection.loss import multibox_loss
from ..detection.matching import match_anchors
from ..detection.ssd import SSD, SSDConfig
from ..distributed import DistInfo
from ..recipe import DetectConfig
from ..weights import WeightsInfo, weights_info
from .loop import Prepared, finish, run


def load_detector(weights: str | os.PathLike[str], map_location: Any = "cpu", *, runtime: str | None = None,
                  threads: int | None = None) -> Any:
    """A detector: our weights file (an SSD); Google's detection ``.tflite`` imported on the fly (an SSD), or run
    in the TF Lite interpreter with ``runtime="tflite"``; any other deployed file (``.onnx``, ``.pte``, OpenVINO
    ``.xml``, our ``.tflite`` exports) in its runtime (:func:`mobilenet.detection.runtime.open_detector`)."""
    from ..detection.runtime import open_detector
    from ..runtimes.tflite import read_metadata

    if str(weights).lower().endswith(".tflite") and runtime is None and not read_metadata(weights)[0]:
        from ..tflite.ssd import import_detect_tflite

        return import_detect_tflite(weights).to(map_location)
    return open_detector(weights, map_location, runtime=runtime, threads=threads)


def read_split(cfg: DetectConfig, split: str) -> DetectionDataset:
    """One split of ``cfg.data``; its annotation problems (file:line: message) are in ``.problems``."""
    if not cfg.data:
        raise ValueError("no training data: give --data (or data = ... in the recipe)")
    kw: dict[str, Any] = {}
    if cfg.data_format == "kitti":
        kw = {"val_fraction": cfg.val_fraction, "seed": cfg.seed}
    elif cfg.data_format == "coco":
        kw = {"image_dir": cfg.image_dir}
    return read_dataset(cfg.data_format, cfg.data, split, cfg.class_names(), **kw)


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


def build_detector(cfg: DetectConfig, class_names: list[str]) -> tuple[SSD, list[str]]:
    """The SSD ``cfg`` asks for, detecting ``class_names``, and notes on how it was made.

    ``weights``: a detector to fine-tune (class heads replaced when the count differs; ``image_size``
    applied); else a new SSD of ``width_mult``/``ssdlite`` whose initial weights ``seed`` fixes.
    ``backbone_weights``: a classifier's body for the backbone.
    """
    notes: list[str] = []
    size = cfg.image_hw()
    if cfg.weights:
        model = load_detector(cfg.weights)
        adopt_classes(model, class_names)
        old = model.config.image_size
        if size and set_input_size(model, size):
            notes.append(f"input size {old[0]}x{old[1]} -> {size[0]}x{size[1]} (anchors generated for the new size)")
    else:
        torch.manual_seed(cfg.seed)  # the seed fixes the initial weights too, not only the data order
        model = SSD(SSDConfig(num_classes=len(class_names), width_mult=cfg.width_mult, ssdlite=cfg.ssdlite,
                              **({"image_size": size} if size else {})))
    if cfg.backbone_weights:
        state, _ = read(cfg.backbone_weights)
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        load_state_strict(model.backbone, state, cfg.backbone_weights)
    return model, notes


def build_targets(model: SSD, targets: list[dict[str, Any]], image_size: tuple[int, int], cfg: DetectConfig,
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


def match_postprocess_to_loss(model: SSD, cfg: DetectConfig) -> str | None:
    """Scores must be read the way the loss trained them: softmax loss -> softmax scores, focal -> sigmoid.

    Matters when fine-tuning an import: TF Lite's COCO SSD scores with sigmoid, one class per anchor.
    Returns a note when it changed the model's post-processing.
    """
    want = "softmax" if cfg.classification == "softmax" else "sigmoid"
    pp = model.config.postprocess
    if pp.score_fn == want:
        return None
    new = replace(pp, score_fn=want, nms_mode="per_class", clip_boxes=True,
                  max_detections=max(pp.max_detections, 100), score_threshold=min(pp.score_threshold, 0.01))
    model.config = replace(model.config, postprocess=new)
    return f"post-processing set to {want} scores, per-class NMS, to match the {cfg.classification} loss"


def _folded_bn(model: SSD) -> bool:
    source = weights_info(model).source
    return source is not None and source.format == "tflite"  # TF Lite folded every BatchNorm into its conv


class DetectionTask:
    """SSD training on a detection dataset (see the module doc)."""

    metric = "map"
    sums = ("box_loss", "cls_loss")

    def __init__(self, cfg: DetectConfig, *, model: SSD | None = None, train_set: DetectionDataset | None = None,
                 val_set: DetectionDataset | None = None) -> None:
        self.cfg, self.model, self.train_set, self.val_set = cfg, model, train_set, val_set
        self.freeze_bn = cfg.freeze_bn

    def prepare(self, info: DistInfo) -> Prepared:
        cfg = self.cfg
        train_set = self.train_set if self.train_set is not None else read_split(cfg, cfg.split)
        if self.val_set is None and cfg.val_split:
            self.val_set = read_split(cfg, cfg.val_split)
        if len(train_set) == 0:
            raise ValueError("the training set is empty")
        names = list(train_set.class_names)
        notes: list[str] = []
        if self.model is None:
            self.model, notes = build_detector(cfg, names)
        elif self.model.config.num_classes != len(names):
            raise ValueError(f"the model detects {self.model.config.num_classes} classes, the training set has "
                             f"{len(names)}: call adopt_classes(model, names) first")
        model = self.model
        adopt_classes(model, names)  # records the names: evaluation maps labels by them
        if _folded_bn(model) and not self.freeze_bn:
            self.freeze_bn = True
            notes.append("BatchNorm statistics kept fixed: the imported .tflite has its BatchNorm folded")
        if note := match_postprocess_to_loss(model, cfg):
            notes.append(note)
        mcfg = model.config
        augment = TrainTransform(mcfg.image_size, mcfg.pixel_mean, mcfg.pixel_std, photometric=cfg.augment,
                                 crop=cfg.augment, flip=cfg.augment, expand_ratio=4.0 if cfg.augment else 1.0)
        data = DetectionDataset(train_set.annotations, names, train_set.problems, augment)
        problems = {cfg.split: train_set.problems}
        if self.val_set is not None:
            problems[cfg.val_split or "val"] = self.val_set.problems
        return Prepared(model=model, data=data, batch_size=min(cfg.batch_size, len(data)),
                        info=WeightsInfo(classes=names), collate=collate,
                        describe={"val_size": len(self.val_set) if self.val_set is not None else 0,
                                  "num_classes": len(names), "notes": notes,
                                  "weights": cfg.weights or "random initialisation",
                                  "problems": {k: v for k, v in problems.items() if v}})

    def set_mode(self, model: nn.Module, epoch: int) -> None:
        if self.freeze_bn:  # BatchNorm in eval mode: running statistics used, never updated
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def step(self, net: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, int,
                                                                           dict[str, torch.Tensor]]:
        images, targets = batch
        images = images.to(device, non_blocking=True)
        if self.cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        box_pred, logits = net(images)
        labels, box_target = build_targets(self.model, targets, tuple(images.shape[-2:]), self.cfg,  # type: ignore[arg-type]
                                           device)
        out = multibox_loss(box_pred.float(), logits.float(), box_target, labels, neg_pos_ratio=self.cfg.neg_pos_ratio,
                            classification=self.cfg.classification)
        n = images.shape[0]
        return out.total, n, {"box_loss": out.box.detach() * n, "cls_loss": out.cls.detach() * n}

    def evaluate(self, model: nn.Module, info: DistInfo) -> dict[str, Any] | None:
        if self.val_set is None or not info.is_main:  # scored on rank 0 alone (a detector's mAP does not shard)
            return None
        r = evaluate_detector(model, self.val_set, metric=self.cfg.metric,
                              batch_size=max(self.cfg.batch_size // info.world_size, 1), device=info.device)
        return {"map": r["map"]}


def train_detector(cfg: DetectConfig, *, model: SSD | None = None, train_set: DetectionDataset | None = None,
                   val_set: DetectionDataset | None = None, info: DistInfo | None = None) -> Iterator[dict[str, Any]]:
    """Train an SSD per ``cfg``, yielding the engine's events (:mod:`mobilenet.engine.loop`).

    ``model`` (default: built from ``cfg``, :func:`build_detector`) must already detect the training set's
    classes; ``train_set``/``val_set`` default to ``cfg.split``/``cfg.val_split`` of ``cfg.data``.
    """
    task = DetectionTask(cfg, model=model, train_set=train_set, val_set=val_set)
    return run(task, cfg, info=info)


def fit_detector(cfg: DetectConfig, **kwargs: Any) -> dict[str, Any]:
    """Run :func:`train_detector` to the end and return its last event (``end``, or ``interrupted``)."""
    return finish(train_detector(cfg, **kwargs))


__all__ = ["DetectionTask", "adopt_classes", "build_detector", "build_targets", "fit_detector", "load_detector",
           "read_split", "set_input_size", "train_detector"]
