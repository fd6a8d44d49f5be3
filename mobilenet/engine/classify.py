"""Classification as a task of the engine: ``train(cfg)`` yields the engine's events, ``fit(cfg)`` runs to the end.

The task builds a MobileNetV1 (new, or from ``cfg.weights`` with a new classifier when the labels
differ), opens the data (a DataLoader over image datasets, or with ``device_data`` the whole set
decoded once onto the device), computes cross-entropy (plus knowledge distillation from a teacher)
and validates top-1/top-5. Everything else is :func:`mobilenet.engine.loop.run`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import pretrained_path, resolve_weights
from ..checkpoint import WeightsFileError, load, load_state_strict, read
from ..data import DecodedImages
from ..distributed import DistInfo
from ..evaluate import evaluate
from ..model import MobileNetConfig, MobileNetV1
from ..preprocessing import Preprocessing
from ..recipe import TrainConfig
from ..weights import WeightsInfo
from .data import DeviceData
from .loop import Prepared, finish, run

ARCHITECTURE = ("width_mult", "resolution", "preset", "stem_stride", "dropout", "conv_type", "shallow", "in_chans")
APPLICABLE = ("resolution", "stem_stride", "dropout")  # change no tensor shape: applied to loaded weights too


def weights_path(cfg: TrainConfig) -> str | None:
    """The file ``cfg.weights`` names, or that of the published weights ``--pretrained`` or a variant name in
    ``--weights`` stands for (the pretrained cache, :mod:`mobilenet.cache`)."""
    if cfg.pretrained:
        return str(pretrained_path(str(cfg.model)))
    return str(resolve_weights(cfg.weights)) if cfg.weights is not None else None


def model_config(cfg: TrainConfig) -> tuple[MobileNetConfig, tuple[dict[str, torch.Tensor], dict[str, Any]] | None]:
    """The config of the model to train (its class count aside) and the weights file's (tensors, header), if any.

    With ``cfg.weights`` the architecture is the file's; ``resolution``, ``stem_stride`` and ``dropout``
    given in ``cfg`` are applied to it (the resolution has one home: the model's config, which the
    preprocessing then follows); other architecture settings that differ from the file are refused.
    """
    given = {k: getattr(cfg, k) for k in ARCHITECTURE if getattr(cfg, k) is not None}
    path = weights_path(cfg)
    if path is None:
        return MobileNetConfig(**given), None
    tensors, meta = read(path)
    if meta.get("architecture") != "mobilenet_v1":
        raise WeightsFileError(
            f"{path}: architecture {meta.get('architecture')!r} is not a mobilenet_v1 classifier")
    saved = MobileNetConfig.from_dict(meta["config"])
    for key, value in given.items():
        if key not in APPLICABLE and value != getattr(saved, key):
            raise ValueError(f"{path} holds a {key}={getattr(saved, key)!r} model: {key}={value!r} cannot "
                             f"change it (leave it out to fine-tune the file's)")
    return replace(saved, **{k: v for k, v in given.items() if k in APPLICABLE}), (tensors, meta)


def build_model(cfg: TrainConfig, num_classes: int, class_names: Sequence[str] | None = None, *,
                resolved: tuple[MobileNetConfig, Any] | None = None) -> tuple[MobileNetV1, str]:
    """The model to train and a note on where its weights came from (``resolved``: :func:`model_config`'s).

    With ``cfg.weights`` every tensor of the file is loaded; the classifier is replaced when the class
    count or class names differ from the data's (fine-tuning on a new label set).
    """
    config, source = resolved or model_config(cfg)
    if source is None:
        return MobileNetV1.from_config(replace(config, num_classes=num_classes)), "random initialisation"
    tensors, meta = source
    applied = [f"{k}={getattr(config, k)}" for k in APPLICABLE if getattr(cfg, k) is not None]
    path = str(weights_path(cfg))
    origin = path + (f" with {', '.join(applied)}" if applied else "")
    model = MobileNetV1.from_config(config)
    names = meta.get("class_names")
    if model.num_classes == num_classes and (class_names is None or names in (None, list(class_names))):
        load_state_strict(model, tensors, path)
        return model, f"all weights from {origin}"
    body = {k: v for k, v in tensors.items() if not k.startswith("classifier.")}
    model.reset_classifier(0)  # no classifier while loading the body, then a fresh one
    load_state_strict(model, body, path)
    model.reset_classifier(num_classes)
    return model, f"body from {origin}, new {num_classes}-class classifier"


def _placeholder(bn: nn.Module) -> bool:
    """A BatchNorm an importer left for a BN folded into its conv: mean 0, var 1 - eps, scale 1 (shift = bias)."""
    return (isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None and bool((bn.running_mean == 0).all())
            and bool((bn.weight == 1).all()) and bool((bn.running_var == 1 - bn.eps).all()))


@torch.no_grad()
def restore_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Give real statistics to the BatchNorm layers an import left as placeholders; returns how many.

    A ``.tflite`` has its BatchNorm folded into the convs: the import's BN is the identity plus the folded bias
    (``mobilenet.convert.imported``), which trains as a real BN would not: in training mode it normalises with
    batch statistics the weights never saw (fine-tuning collapsed, 98% -> 60% on digits after one unfrozen
    epoch). Here each placeholder's input is measured on ``batches`` (mean m, variance v per channel) and the
    layer becomes running mean m, running variance v, scale sqrt(v + eps), shift bias + m: the same function
    in eval mode, and a BN whose batch statistics match its running ones in training mode.
    """
    layers = [m for m in model.modules() if _placeholder(m)]
    if not layers:
        return 0
    sums = {bn: torch.zeros(3, bn.num_features, dtype=torch.float64, device=bn.weight.device) for bn in layers}

    def measure(bn: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].double().transpose(0, 1).flatten(1)  # (C, B*H*W)
        sums[bn] += torch.stack([x.sum(1), (x * x).sum(1), torch.full_like(x[:, 0], x.shape[1])])

    handles = [bn.register_forward_pre_hook(measure) for bn in layers]
    was_training = model.training
    model.eval()
    try:
        for x in batches:
            model(x.to(next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for bn, (s1, s2, n) in sums.items():
        mean = s1 / n
        var = (s2 / n - mean * mean).clamp(min=0)
        bn.bias += mean.to(bn.bias.dtype)
        bn.weight.copy_((var + bn.eps).sqrt())
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
    return len(layers)


def preprocessing_for(cfg: TrainConfig, resolution: int, saved: Preprocessing | None = None) -> Preprocessing:
    """Evaluation preprocessing at the model's ``resolution``; travels with the weights. The normalisation is
    ``cfg.normalization`` when given, else the one ``saved`` with the initial weights (a model trained on [-1, 1]
    inputs keeps them), else ImageNet's. On the device path the images are resized whole (no crop)."""
    if cfg.normalization is None and saved is not None:
        base = saved
    else:
        base = Preprocessing.tf(resolution) if cfg.normalization == "tf" else Preprocessing.imagenet(resolution)
    crop = 1.0 if cfg.device_data else cfg.crop_fraction
    return Preprocessing.from_dict({**base.to_dict(), "resolution": resolution, "crop_fraction": crop})


def resolved_settings(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg`` as a dict with what the run will actually use filled in: the model's architecture (the weights'
    with ``--weights``/``--pretrained``, with the applicable flags applied) and the preprocessing that goes with
    it (``--print-config``)."""
    config, source = model_config(cfg)
    saved = WeightsInfo.from_header(source[1]).preprocessing if source is not None else None
    out = cfg.to_dict()
    out.update({k: getattr(config, k) for k in ARCHITECTURE})
    if cfg.normalization is None:
        out["normalization"] = "from the weights" if saved is not None else "imagenet"
    out["preprocessing"] = preprocessing_for(cfg, config.resolution, saved).to_dict()
    return out


def open_datasets(cfg: TrainConfig, preprocessing: Preprocessing) -> tuple[Any, Any, list[str]]:
    """(train set, validation set or None, class names) from ``cfg.data`` / ``cfg.val_data``; with
    ``device_data``, un-transformed datasets for decoding."""
    from ..data import eval_transform, open_image_dataset, split_dataset, train_transform

    if not cfg.data:
        raise ValueError("no training data: give --data (a folder, .zip, .tar, cifar10:<path>#train or digits#train)")
    t_train, t_eval = (None, None) if cfg.device_data else (train_transform(cfg.augment, preprocessing),
                                                            eval_transform(preprocessing))
    if cfg.val_data:
        train_set = open_image_dataset(cfg.data, transform=t_train)
        val_set = open_image_dataset(cfg.val_data, transform=t_eval, class_names=train_set.class_names)
    elif cfg.val_fraction > 0:
        train_set, val_set = split_dataset(open_image_dataset(cfg.data), cfg.val_fraction, cfg.split_seed,
                                           train_transform=t_train, val_transform=t_eval)
    else:
        train_set, val_set = open_image_dataset(cfg.data, transform=t_train), None
    return train_set, val_set, list(train_set.class_names)


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


class ClassificationTask:
    """Image classification with a MobileNetV1 (see the module doc)."""

    metric = "val_top1"
    sums = ("acc",)

    def __init__(self, cfg: TrainConfig, *, train_set: Any = None, val_set: Any = None,
                 class_names: Sequence[str] | None = None) -> None:
        self.cfg, self.train_set, self.val_set, self.class_names = cfg, train_set, val_set, class_names
        self.teacher: nn.Module | None = None
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def _device_data(self, data: Any, pre: Preprocessing, info: DistInfo, *, train: bool) -> DeviceData:
        from ..data import cutout, load_tensor_dataset, normalize_batch, random_crop_flip

        cfg = self.cfg
        decoded = data if isinstance(data, DecodedImages) else load_tensor_dataset(data, size=pre.resolution)

        def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
            if cfg.augment == "cifar":
                x = random_crop_flip(x, 4, generator=generator)
            return cutout(x, cfg.cutout, generator=generator) if cfg.cutout else x

        return DeviceData(decoded.images.to(info.device), decoded.labels.to(info.device),
                          normalize=lambda x: normalize_batch(x, pre, channels_last=cfg.channels_last),
                          augment=augment if train and (cfg.augment == "cifar" or cfg.cutout) else None)

    def prepare(self, info: DistInfo) -> Prepared:
        cfg, names = self.cfg, self.class_names
        resolved = model_config(cfg)
        saved = WeightsInfo.from_header(resolved[1][1]).preprocessing if resolved[1] is not None else None
        pre = preprocessing_for(cfg, resolved[0].resolution, saved)
        train_set, val_set = self.train_set, self.val_set
        if train_set is None:
            train_set, opened_val, opened_names = open_datasets(cfg, pre)
            val_set = val_set if val_set is not None else opened_val
            names = names or opened_names
        names = list(names or getattr(train_set, "class_names", None) or [])
        if not names:
            raise ValueError("class_names are needed: pass them or use a dataset with a class_names attribute")
        if len(names) < 2:  # one class: the loss is 0 and the accuracy 100% from the first step, whatever is learnt
            raise ValueError(f"the training data have 1 class ({names[0]!r}): a classifier needs at least 2 classes "
                             "(one folder of images per class)")
        if cfg.device_data or isinstance(train_set, DecodedImages):
            train_set = self._device_data(train_set, pre, info, train=True)
            val_set = self._device_data(val_set, pre, info, train=False) if val_set is not None else None
        self.val = val_set if val_set is not None and len(val_set) else None
        model, origin = build_model(cfg, len(names), names, resolved=resolved)
        notes = []
        if (cfg.weights or cfg.pretrained) and (n := restore_batchnorm(model, self._sample(train_set))):
            notes.append(f"BatchNorm of {n} layers re-estimated on the training data: the weights had it folded "
                         f"into the convolutions (a .tflite import)")
        if cfg.teacher:
            self.teacher = load(cfg.teacher, map_location=info.device).eval()
            if getattr(self.teacher, "num_classes", None) != len(names):
                raise ValueError(f"teacher {cfg.teacher} has {getattr(self.teacher, 'num_classes', '?')} classes, "
                                 f"the data has {len(names)}")
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        return Prepared(model=model, data=train_set, batch_size=cfg.batch_size,
                        info=WeightsInfo(classes=names, preprocessing=pre),
                        describe={"val_size": len(val_set) if val_set is not None else 0, "num_classes": len(names),
                                  "weights": origin, "notes": notes},
                        lr_scales={"classifier.": cfg.head_lr_mult})

    def _sample(self, data: Any, count: int = 256, batch: int = 64) -> Iterator[torch.Tensor]:
        """Input batches of ``count`` training samples spread over the set (for BatchNorm statistics)."""
        idx = torch.linspace(0, len(data) - 1, min(count, len(data))).long().unique().tolist()
        for start in range(0, len(idx), batch):
            chunk = idx[start:start + batch]
            if isinstance(data, DeviceData):
                yield data.normalize(data.images[torch.tensor(chunk, device=data.images.device)])
            else:
                yield torch.stack([data[i][0] for i in chunk])

    def set_mode(self, model: nn.Module, epoch: int) -> bool:
        frozen = epoch < self.cfg.freeze_backbone_epochs
        set_backbone_frozen(model, frozen)  # type: ignore[arg-type]
        return frozen

    def step(self, net: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, int,
                                                                           dict[str, torch.Tensor]]:
        x, y = batch
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = net(x)
        loss = self.criterion(logits, y)
        if self.teacher is not None:
            with torch.no_grad():
                t_logits = self.teacher(x)
            a = self.cfg.distill_alpha
            loss = (1 - a) * loss + a * distillation_loss(logits.float(), t_logits.float(),
                                                          self.cfg.distill_temperature)
        return loss, y.numel(), {"acc": (logits.detach().argmax(1) == y).sum() * 100.0}

    def evaluate(self, model: nn.Module, info: DistInfo) -> dict[str, Any] | None:
        if self.val is None:
            return None
        from ..data import make_eval_loader

        # Each rank scores every world_size-th sample; evaluate() sums over ranks, so nothing is counted twice.
        # An unreadable validation image is left out (and listed), never scored as a copy of its neighbour.
        size = max(self.cfg.batch_size // info.world_size, 1)
        batches = self.val.shard(info, size) if isinstance(self.val, DeviceData) else make_eval_loader(
            self.val, size, workers=self.cfg.workers, pin_memory=info.device.type == "cuda",
            indices=range(info.rank, len(self.val), info.world_size))
        res = evaluate(model, batches, device=info.device, amp=self.cfg.amp, channels_last=self.cfg.channels_last)
        return {"val_loss": res["loss"], "val_top1": res["top1"], "val_top5": res["top5"], "val_count": res["count"]}


def train(cfg: TrainConfig, *, train_set: Any = None, val_set: Any = None, class_names: Sequence[str] | None = None,
          info: DistInfo | None = None) -> Iterator[dict[str, Any]]:
    """Train a classifier per ``cfg``, yielding the engine's events (:mod:`mobilenet.engine.loop`).

    Data comes from ``train_set``/``val_set`` when given (map-style datasets of ``(tensor, label)``, or
    :class:`~mobilenet.data.DecodedImages` for the on-device path), else from ``cfg.data``/``cfg.val_data``.
    """
    task = ClassificationTask(cfg, train_set=train_set, val_set=val_set, class_names=class_names)
    return run(task, cfg, info=info)


def fit(cfg: TrainConfig, **kwargs: Any) -> dict[str, Any]:
    """Run :func:`train` to the end and return its last event (``end``, or ``interrupted``)."""
    return finish(train(cfg, **kwargs))


__all__ = ["ClassificationTask", "build_model", "distillation_loss", "fit", "open_datasets", "preprocessing_for",
           "resolved_settings", "set_backbone_frozen", "train"]
