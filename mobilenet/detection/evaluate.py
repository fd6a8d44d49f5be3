"""Run a detector over an annotated dataset and score it (VOC, KITTI or COCO metrics)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm import tqdm

from .augment import EvalTransform, collate
from .datasets import DetectionDataset
from .metrics import coco_evaluate, kitti_evaluate, voc_evaluate
from .postprocess import PostprocessConfig

METRICS = ("voc", "voc07", "kitti", "coco")


@torch.no_grad()
def predict_dataset(model: Any, dataset: DetectionDataset, *, batch_size: int = 8, device: str | torch.device = "cpu",
                    workers: int = 0, postprocess: PostprocessConfig | None = None, progress: bool = False
                    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Detections for every image of ``dataset`` in its original pixel coordinates, in dataset order."""
    cfg = model.config
    ds = DetectionDataset(dataset.annotations, dataset.class_names, dataset.problems,
                          EvalTransform(cfg.image_size, cfg.pixel_mean, cfg.pixel_std))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=collate)
    was_training = model.training
    model.eval()
    out = []
    for images, targets in tqdm(loader, desc="eval", disable=not progress, leave=False):
        dets = model.detect(images.to(device), postprocess)
        for d, t in zip(dets, targets, strict=True):
            w, h = t["orig_size"]
            d = d.scaled(w, h)
            out.append((d.boxes.cpu(), d.scores.cpu(), d.labels.cpu()))
    model.train(was_training)
    return out


def score_detections(detections: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                     dataset: DetectionDataset, metric: str = "voc") -> dict[str, Any]:
    """Metric dict with a headline ``"map"`` (fraction in [0, 1]) and per-class details."""
    names = dataset.class_names
    if metric in ("voc", "voc07"):
        r = voc_evaluate(detections, dataset.annotations, len(names), use_07_metric=metric == "voc07")
        return {"metric": metric, "map": r["map"], "per_class": dict(zip(names, r["ap"], strict=True)),
                "num_gt": dict(zip(names, r["num_gt"], strict=True))}
    if metric == "kitti":
        r = kitti_evaluate(detections, dataset.annotations, names, classes=names)
        mods = [v["moderate"]["ap_r40"] for v in r.values() if v["moderate"]["num_gt"]]
        return {"metric": metric, "map": sum(mods) / len(mods) / 100 if mods else float("nan"), "per_class": r}
    if metric == "coco":
        r = coco_evaluate(detections, dataset.annotations, names)
        return {"metric": metric, **r}
    raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")


def evaluate_detector(model: Any, dataset: DetectionDataset, *, metric: str = "voc", batch_size: int = 8,
                      device: str | torch.device = "cpu", workers: int = 0, progress: bool = False) -> dict[str, Any]:
    """Predict then score: the metric dict of ``score_detections``."""
    dets = predict_dataset(model, dataset, batch_size=batch_size, device=device, workers=workers, progress=progress)
    return score_detections(dets, dataset, metric)
