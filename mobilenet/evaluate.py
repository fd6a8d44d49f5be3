"""Classification metrics: top-k accuracy, loss, per-class accuracy and the confusion matrix.

``evaluate`` puts the model in eval mode (BatchNorm uses its running statistics: evaluating in
train mode is a classic bug that silently scores a different network) and restores the previous
mode afterwards. Dataset labels can be mapped onto the model's class list by name
(``label_map``), so a folder holding only some of the classes (e.g. 3 ImageNet WordNet ids) is
scored against the right output units. Under DDP every rank scores its shard and the sums are
all-reduced, so the numbers are over the whole set. Feed it ``mobilenet.data.make_eval_loader``
batches: an unreadable image is then left out and listed (``batches.skipped``), never replaced by
another image that would be scored under the wrong class; ``count`` is the images actually scored.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import all_reduce_sum
from .inference import as_logits
from .predict import check_finite, require_classifier


def accuracy(logits: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1,)) -> list[torch.Tensor]:
    """Number of correct predictions (not a rate) for each k: (B, C) logits, (B,) labels -> [scalar, ...]."""
    maxk = min(max(topk), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices  # (B, maxk)
    hit = pred.eq(target.unsqueeze(1))  # (B, maxk)
    return [hit[:, : min(k, maxk)].any(dim=1).sum() for k in topk]


def label_map(dataset_classes: Sequence[str], model_classes: Sequence[str] | None, num_outputs: int) -> list[int]:
    """Index of each dataset class among the model's outputs, by name.

    Without a model class list the dataset's label i is output i (and must be < ``num_outputs``).
    TF-style 1001-way models have ``background`` first; names match as stored with the weights.
    """
    if model_classes is None:
        if len(dataset_classes) > num_outputs:
            raise ValueError(f"the data has {len(dataset_classes)} classes but the model has only {num_outputs} "
                             "outputs and no class names to match them by")
        return list(range(len(dataset_classes)))
    index = {name: i for i, name in enumerate(model_classes)}
    missing = [c for c in dataset_classes if c not in index]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ValueError(f"{len(missing)} class folder(s) are not among the model's {len(model_classes)} classes: "
                         f"{shown} (the model's classes start {', '.join(map(repr, model_classes[:3]))})")
    return [index[c] for c in dataset_classes]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device | str = "cpu",
    class_names: Sequence[str] | None = None,
    dataset_classes: Sequence[str] | None = None,
    confusion: bool = False,
    amp: str = "none",
    channels_last: bool = False,
    topk: Sequence[int] = (1, 5),
) -> dict[str, Any]:
    """Score ``model`` on ``(images, labels)`` batches.

    ``class_names``: the model's class list (from its weights file); ``dataset_classes``: the data's
    class names, mapped onto it by name. Returns ``top1``, ``top5`` (percent), ``loss`` (mean
    cross-entropy), ``count``, ``per_class`` ({name: {count, top1}}) and, if asked, ``confusion``
    (rows: true dataset class, columns: predicted model class).
    """
    require_classifier(model)
    device = torch.device(device)
    was_training = model.training
    model.eval()
    num_outputs: int | None = None
    mapping: torch.Tensor | None = None
    n_ds = len(dataset_classes) if dataset_classes is not None else None
    sums = None  # [count, loss_sum, correct@k...]
    per_class_count = per_class_correct = conf = None
    ctx = (torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
           if amp in ("bf16", "fp16") else nullcontext())
    try:
        for x, y in batches:
            x = x.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            with ctx:
                logits = model(x)
            logits = logits.float()
            check_finite(logits)  # NaN logits would still "score" (argmax picks some class): never a result
            logits = as_logits(logits, model)  # a file that ends in its softmax: the log of its probabilities
            if num_outputs is None:
                num_outputs = logits.shape[1]
                ds_classes = dataset_classes if dataset_classes is not None else [str(i) for i in range(num_outputs)]
                n_ds = len(ds_classes)
                mapping = torch.tensor(label_map(ds_classes, class_names, num_outputs), device=device)
                sums = torch.zeros(2 + len(topk), dtype=torch.float64, device=device)
                per_class_count = torch.zeros(n_ds, dtype=torch.float64, device=device)
                per_class_correct = torch.zeros(n_ds, dtype=torch.float64, device=device)
                if confusion:
                    conf = torch.zeros(n_ds, num_outputs, dtype=torch.float64, device=device)
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_ds):
                raise ValueError(f"label {int(y.max())} out of range for {n_ds} dataset classes")
            target = mapping[y]  # dataset label -> model output index
            sums[0] += y.numel()
            sums[1] += F.cross_entropy(logits, target, reduction="sum").double()
            for j, c in enumerate(accuracy(logits, target, topk)):
                sums[2 + j] += c.double()
            pred = logits.argmax(1)
            per_class_count.index_add_(0, y, torch.ones_like(y, dtype=torch.float64))
            per_class_correct.index_add_(0, y, pred.eq(target).double())
            if conf is not None:
                conf.index_put_((y, pred), torch.ones_like(y, dtype=torch.float64), accumulate=True)
    finally:
        model.train(was_training)
    if sums is None:
        skipped = list(getattr(batches, "skipped", []))
        if skipped:
            first = "; ".join(f"{name}: {reason}" for name, reason in skipped[:3])
            raise ValueError(f"no readable image to evaluate: all {len(skipped)} file(s) were left out (e.g. {first})")
        raise ValueError("no data to evaluate: the dataset is empty")
    for t in (sums, per_class_count, per_class_correct) + ((conf,) if conf is not None else ()):
        all_reduce_sum(t)
    count = int(sums[0].item())
    out: dict[str, Any] = {"count": count, "loss": float(sums[1] / max(count, 1))}
    for j, k in enumerate(topk):
        out[f"top{k}"] = 100.0 * float(sums[2 + j] / max(count, 1))
    names = list(dataset_classes) if dataset_classes is not None else [str(i) for i in range(n_ds)]
    out["per_class"] = {
        names[i]: {"count": int(per_class_count[i]),
                   "top1": 100.0 * float(per_class_correct[i] / per_class_count[i]) if per_class_count[i] else None}
        for i in range(n_ds)
    }
    if conf is not None:
        out["confusion"] = conf.long().tolist()
    return out
