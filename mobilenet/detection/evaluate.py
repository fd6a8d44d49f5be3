"""Run a detector over an annotated dataset and score it (VOC, KITTI or COCO metrics)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm import tqdm

from ..weights import weights_info
from .augment import EvalTransform, collate
from .datasets import DetectionDataset
from .metrics import coco_evaluate, kitti_evaluate, voc_evaluate
from .postprocess import PostprocessConfig

METRICS = ("voc", "voc07", "kitti", "coco")
# Pascal VOC names of classes COCO (and TF Lite's labelmap) spells differently.
VOC_TO_COCO = {"aeroplane": "airplane", "motorbike": "motorcycle", "sofa": "couch", "tvmonitor": "tv",
               "diningtable": "dining table", "pottedplant": "potted plant"}


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


def remap_labels(detections: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], model_names: Sequence[str],
                 dataset_names: Sequence[str]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Re-index detections from the model's classes to the dataset's by name; other classes are dropped.

    Lets a detector be scored on a dataset with a different class list (e.g. the COCO SSD on VOC,
    over the classes whose names agree, VOC's spellings mapped to COCO's by ``VOC_TO_COCO``).
    ValueError when no name is shared.
    """
    index = {n: i for i, n in enumerate(dataset_names)}
    index.update({VOC_TO_COCO[n]: i for i, n in enumerate(dataset_names) if n in VOC_TO_COCO})
    table = torch.tensor([index.get(n, -1) for n in model_names], dtype=torch.long)
    if (table < 0).all():
        raise ValueError(f"the model's classes ({', '.join(model_names[:5])}, ...) share no name with the dataset's "
                         f"({', '.join(dataset_names[:5])}, ...)")
    out = []
    for boxes, scores, labels in detections:
        new = table[labels]
        keep = new >= 0
        out.append((boxes[keep], scores[keep], new[keep]))
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
    """Predict then score: the metric dict of ``score_detections``. A model whose saved class names
    differ from the dataset's is scored on the classes the two share by name (``remap_labels``)."""
    dets = predict_dataset(model, dataset, batch_size=batch_size, device=device, workers=workers, progress=progress)
    names = weights_info(model).classes
    if names and list(names) != list(dataset.class_names):
        dets = remap_labels(dets, names, dataset.class_names)
    return score_detections(dets, dataset, metric)
