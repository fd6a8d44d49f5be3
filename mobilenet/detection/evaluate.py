"""Run a detector over an annotated dataset and score it (VOC, KITTI or COCO metrics)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..data.decode import ImageDecodeError
from ..data.loader import init_worker
from ..table import Table
from ..weights import weights_info
from .augment import EvalTransform, collate
from .datasets import DetectionDataset
from .labels import class_index
from .metrics import coco_evaluate, kitti_evaluate, voc_evaluate
from .postprocess import PostprocessConfig

METRICS = ("voc", "voc07", "kitti", "coco")


class _LeaveOutUnreadable(torch.utils.data.Dataset):
    """``(index, item)``, or ``(index, (image path, reason))`` for an image that cannot be decoded: evaluation
    leaves it out and lists it, never scoring another image in its place."""

    def __init__(self, dataset: DetectionDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        try:
            return i, self.dataset.get(i, replace_unreadable=False)
        except ImageDecodeError as error:
            return i, (str(self.dataset.annotations[i].image_path), str(error).split(": ", 1)[-1])


def _collate_readable(batch: list[tuple[int, Any]]) -> tuple[list[int], Any, list[tuple[int, str, str]]]:
    good = [(i, item) for i, item in batch if not isinstance(item[0], str)]
    bad = [(i, *item) for i, item in batch if isinstance(item[0], str)]
    images, targets = collate([item for _, item in good]) if good else (None, [])
    return [i for i, _ in good], (images, targets), bad


Detections = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]


def predict_dataset(model: Any, dataset: DetectionDataset, *, batch_size: int = 8, device: str | torch.device = "cpu",
                    workers: int = 0, postprocess: PostprocessConfig | None = None, progress: bool = False
                    ) -> Detections:
    """Detections for every image of ``dataset`` in its original pixel coordinates, in dataset order; ``None``
    for an image that cannot be decoded (``evaluate_detector`` leaves those out of the score and lists them)."""
    return _predict(model, dataset, batch_size=batch_size, device=device, workers=workers, postprocess=postprocess,
                    progress=progress)[0]


@torch.no_grad()
def _predict(model: Any, dataset: DetectionDataset, *, batch_size: int, device: str | torch.device, workers: int,
             postprocess: PostprocessConfig | None, progress: bool) -> tuple[Detections, list[dict[str, str]]]:
    cfg = model.config
    ds = DetectionDataset(dataset.annotations, dataset.class_names, dataset.problems,
                          EvalTransform(cfg.image_size, cfg.pixel_mean, cfg.pixel_std))
    loader = torch.utils.data.DataLoader(_LeaveOutUnreadable(ds), batch_size=batch_size, shuffle=False,
                                         num_workers=workers, collate_fn=_collate_readable,
                                         worker_init_fn=init_worker if workers > 0 else None)
    was_training = model.training
    model.eval()
    out: Detections = [None] * len(ds)
    skipped: list[dict[str, str]] = []
    try:
        for indices, (images, targets), bad in tqdm(loader, desc="eval", disable=not progress, leave=False):
            skipped += [{"image": path, "reason": reason} for _, path, reason in bad]
            if images is None:
                continue
            dets = model.detect(images.to(device), postprocess)
            for i, d, t in zip(indices, dets, targets, strict=True):
                w, h = t["orig_size"]
                d = d.scaled(w, h)
                out[i] = (d.boxes.cpu(), d.scores.cpu(), d.labels.cpu())
    finally:
        model.train(was_training)
    return out, skipped


def remap_labels(detections: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], model_names: Sequence[str],
                 dataset_names: Sequence[str], label_map: Mapping[str, str] | None = None
                 ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Re-index detections from the model's classes to the dataset's by name (``labels.class_index``: the label
    map, the same name in any case, VOC's spellings of COCO's classes); other classes are dropped.

    Lets a detector be scored on a dataset with a different class list (e.g. the COCO SSD on VOC, over the
    classes whose names agree). ValueError when no name is shared.
    """
    table = torch.tensor(class_index(model_names, dataset_names, label_map), dtype=torch.long)
    if (table < 0).all():
        raise ValueError(f"the model's classes ({', '.join(model_names[:5])}, ...) share no name with the dataset's "
                         f"({', '.join(dataset_names[:5])}, ...): map them with --label-map")
    out = []
    for boxes, scores, labels in detections:
        new = table[labels]
        keep = new >= 0
        out.append((boxes[keep], scores[keep], new[keep]))
    return out


def matched_classes(names: Sequence[str], dataset_names: Sequence[str],
                    label_map: Mapping[str, str] | None = None) -> dict[str, str]:
    """{name: the dataset class it is scored as} for the names that match one (what a result reports)."""
    return {n: dataset_names[i] for n, i in zip(names, class_index(names, dataset_names, label_map), strict=True)
            if i >= 0}


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
                      device: str | torch.device = "cpu", workers: int = 0, progress: bool = False,
                      label_map: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Predict then score: the metric dict of ``score_detections``. A model whose saved class names
    differ from the dataset's is scored on the classes the two share by name (``remap_labels``, with
    ``label_map``), and the result says which under ``"class_map"``.

    Images that cannot be decoded are left out of the score (their ground truth too, so they count neither as
    missed nor as found) and listed in ``"skipped"`` as ``{"image", "reason"}``.
    """
    found, skipped = _predict(model, dataset, batch_size=batch_size, device=device, workers=workers,
                              postprocess=None, progress=progress)
    readable = [i for i, d in enumerate(found) if d is not None]
    if not readable:
        raise ValueError(f"no readable image to evaluate: all {len(found)} were left out"
                         + (f" (e.g. {skipped[0]['image']}: {skipped[0]['reason']})" if skipped else ""))
    dets = [d for d in found if d is not None]
    scored = dataset.subset(readable) if skipped else dataset
    names = weights_info(model).classes
    mapped = {}
    if names and (list(names) != list(dataset.class_names) or label_map):
        dets = remap_labels(dets, names, dataset.class_names, label_map)
        mapped = {"class_map": matched_classes(names, dataset.class_names, label_map)}
    return {**score_detections(dets, scored, metric), **mapped, "skipped": skipped}


def score_predictions(path: str | Path, dataset: DetectionDataset, metric: str = "voc",
                      label_map: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Score the JSON ``detect predict`` wrote (``path``) on ``dataset``: the metric dict of ``score_detections``.

    Labels are matched to the dataset's classes as a model's are (``labels.class_index``: ``label_map``, any case,
    VOC's spellings of COCO's classes); detections of other classes are left out, and ``"class_map"`` says which
    labels were scored as what. Images without detections in the file count as having none; a file matching no
    image is an error.
    """
    from .predict import read_predictions

    seen: dict[str, int] = {}
    preds = read_predictions(path, dataset.class_names, label_map=label_map, seen=seen)
    empty = (torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    if not any(a.image_path.stem in preds for a in dataset.annotations):
        raise ValueError(f"{path} has no detections for any image of the dataset")
    result = score_detections([preds.get(a.image_path.stem, empty) for a in dataset.annotations], dataset, metric)
    class_map = {label: dataset.class_names[i] for label, i in sorted(seen.items()) if i >= 0}
    if len(class_map) < len(seen) or any(k != v for k, v in class_map.items()):
        result["class_map"] = class_map  # not every label is a dataset class of the same name: say which are
    return result


def class_map_line(result: dict[str, Any]) -> str | None:
    """One line on how classes were matched by name, when they were (``class_map`` of a result), else None."""
    class_map = result.get("class_map")
    if class_map is None:
        return None
    renamed = [f"{k} as {v}" for k, v in class_map.items() if k != v]
    return (f"scored by class name: {len(class_map)} classes" + (f" ({', '.join(renamed)})" if renamed else "")
            + "; the others are not classes of the dataset (--label-map NAME=DATASET_NAME maps them)")


def metrics_table(result: dict[str, Any]) -> Table:
    """The per-class part of a metric dict (``evaluate_detector``, ``score_detections``) as a table: KITTI's AP (R40,
    %) per difficulty, or AP and ground-truth count per class."""
    if result["metric"] == "kitti":
        rows = [[cls, *(v[d]["ap_r40"] for d in ("easy", "moderate", "hard"))]
                for cls, v in result["per_class"].items()]
        return Table(["class", "easy", "moderate", "hard"], rows, caption="AP R40 (%)")
    rows = [[cls, None if math.isnan(ap) else ap, result["num_gt"][cls]]
            for cls, ap in result.get("per_class", {}).items()]
    return Table(["class", "AP", "#gt"], rows, digits={"AP": 4})
