"""Training settings as typed data: defaults -> TOML recipe -> command-line flags.

:class:`EngineConfig` holds what every training run shares (optimisation, speed, bookkeeping: the
engine's settings, :mod:`mobilenet.engine`); :class:`TrainConfig` adds classification's model and
data, :class:`DetectConfig` detection's. Each is a frozen dataclass whose every field is one flag
(``lr`` -> ``--lr``, ``channels_last`` -> ``--channels-last/--no-channels-last``) and one TOML key,
read and checked by :mod:`mobilenet.config` (TOML tables only group keys). The resolved config is
written into the run folder and into every checkpoint, so a run can be reproduced from it alone.
This module imports no torch: the command line builds its flags from it at start-up.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

from .config import add_flags, check_choices, coerce, flatten_tables, given, read_toml


def _f(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


@dataclass(frozen=True)
class EngineConfig:
    """What every training run needs besides its task: optimisation, speed and bookkeeping.

    ``optimizer`` and ``schedule`` list mobilenet.optim's names (a test keeps them equal; not imported: no torch).
    """

    # optimisation
    epochs: int = _f(10, "number of epochs")
    batch_size: int = _f(128, "GLOBAL batch per optimiser step (split over ranks and accum_steps)")
    accum_steps: int = _f(1, "gradient accumulation: micro-batches per optimiser step")
    optimizer: Literal["rmsprop_tf", "sgd", "adamw", "nadam", "yellowfin"] = _f(
        "sgd", "rmsprop_tf (the paper's), sgd (Nesterov), adamw, nadam, yellowfin (lr: a factor on its tuned rate)")
    lr: float = _f(0.1, "base learning rate")
    momentum: float = _f(0.9, "momentum (sgd, rmsprop_tf)")
    nesterov: bool = _f(True, "Nesterov momentum for sgd")
    rmsprop_decay: float = _f(0.9, "RMSprop squared-average decay")
    rmsprop_eps: float = _f(1.0, "RMSprop epsilon (inside the square root, as TF)")
    weight_decay: float = _f(4e-5, "weight decay on conv/linear weights")
    depthwise_weight_decay: float = _f(0.0, "weight decay on depthwise filters (the paper: little or none)")
    norm_bias_weight_decay: float = _f(0.0, "weight decay on BatchNorm parameters and biases")
    schedule: Literal["exponential", "cosine", "step", "constant"] = _f("cosine", "learning-rate schedule")
    warmup_epochs: float = _f(0.0, "linear warm-up length in epochs")
    warmup_start: float = _f(0.0, "learning rate at the start of the warm-up, as a fraction of lr")
    decay_rate: float = _f(0.94, "exponential/step schedule: factor per decay_epochs")
    decay_epochs: float = _f(2.0, "exponential/step schedule: epochs per decay")
    min_lr_ratio: float = _f(0.0, "cosine schedule: final lr as a fraction of lr")
    grad_clip: float = _f(0.0, "clip the global gradient norm to this (0: off)")
    ema_decay: float = _f(0.0, "EMA of weights decay, e.g. 0.9999 (0: off); validation uses the EMA")
    # speed
    amp: Literal["none", "bf16", "fp16"] = _f("none", "mixed precision autocast (fp16 adds a grad scaler)")
    channels_last: bool = _f(False, "channels_last memory format")
    compile: bool = _f(False, "torch.compile the model")
    device: str = _f("auto", "auto, cpu, cuda, cuda:N")
    workers: int = _f(2, "DataLoader worker processes per rank")
    # bookkeeping
    seed: int = _f(0, "random seed (data order, augmentation, initial weights)")
    deterministic: bool = _f(False, "deterministic algorithms (slower; exact resume on CPU)")
    out: str | None = _f("runs/train", "run folder")
    eval_every: int = _f(1, "epochs between validations (0: only at the end)")
    save_every_steps: int = _f(0, "also save the training state every N optimiser steps (0: epoch ends only)")
    keep_last: int = _f(2, "training states kept besides the best")
    resume: str | None = _f(None, "'auto' (latest state in the run folder) or a run/state folder")
    sync_bn: bool = _f(False, "SyncBatchNorm across ranks (GPU only)")
    tensorboard: bool = _f(True, "log to TensorBoard when it is installed")
    curves: bool = _f(True, "save curves.png at the end (when matplotlib is installed)")
    max_steps: int = _f(0, "stop after this many optimiser steps in total (0: no limit)")
    log_every_steps: int = _f(10, "read the loss back from the device every N steps (progress bar)")

    def __post_init__(self) -> None:
        check_choices(self)
        for f in fields(self):  # NaN/inf pass every comparison below as False or True: refuse them first
            value = getattr(self, f.name)
            _check(not isinstance(value, float) or math.isfinite(value),
                   f"{f.name} must be a finite number, got {value}")
        _check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.accum_steps >= 1, f"accum_steps must be >= 1, got {self.accum_steps}")
        _check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _check(self.ema_decay == 0 or 0 < self.ema_decay < 1, f"ema_decay must be 0 or in (0, 1), got {self.ema_decay}")
        _check(0 <= self.warmup_start <= 1, f"warmup_start must be in [0, 1], got {self.warmup_start}")
        _check(self.workers >= 0, f"workers must be >= 0, got {self.workers}")
        _check(self.log_every_steps >= 1, f"log_every_steps must be >= 1, got {self.log_every_steps}")
        _check(self.keep_last >= 1, f"keep_last must be >= 1, got {self.keep_last}")
        _check(self.save_every_steps >= 0, f"save_every_steps must be >= 0, got {self.save_every_steps}")
        _check(self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}")
        _check(self.max_steps >= 0, f"max_steps must be >= 0 (0: no limit), got {self.max_steps}")
        for name in ("momentum", "weight_decay", "depthwise_weight_decay", "norm_bias_weight_decay", "warmup_epochs",
                     "grad_clip", "min_lr_ratio"):
            _check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        _check(self.decay_rate > 0 and self.decay_epochs > 0,
               f"decay_rate and decay_epochs must be > 0, got {self.decay_rate} and {self.decay_epochs}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any], *, source: str = "config") -> C:
        return cls(**_coerce(flatten_tables(d, source), source, cls))

    def replace(self: C, **changes: Any) -> C:
        return replace(self, **_coerce(changes, "overrides", type(self)))

    def save_json(self, path: str | Path) -> Path:
        from .checkpoint import atomic_write

        path = Path(path)
        with atomic_write(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")
        return path


C = TypeVar("C", bound=EngineConfig)

_NEW_MODEL = "(default: {}; with --weights: the file's)"


@dataclass(frozen=True)
class TrainConfig(EngineConfig):
    """A classification run (``mobilenet train``). See ``configs/*.toml`` for recipes.

    The architecture fields (``width_mult`` ... ``in_chans``) default to None: a new model takes
    MobileNet's defaults, ``--weights`` keep the file's. Given with ``--weights``, ``resolution``,
    ``stem_stride`` and ``dropout`` are applied to the loaded model; the others must match the file.
    """

    # model
    model: str | None = _f(None, "named variant, e.g. mobilenet_v1_050_160 (sets width_mult and resolution)")
    width_mult: float | None = _f(None, "width multiplier alpha " + _NEW_MODEL.format(1.0))
    resolution: int | None = _f(None, "training/eval input size in pixels " + _NEW_MODEL.format(224))
    preset: Literal["paper", "tf", "timm"] | None = _f(
        None, "model preset (paper: ReLU; tf: ReLU6, SAME padding) " + _NEW_MODEL.format("paper"))
    stem_stride: int | None = _f(
        None, "stride of the first conv (1 = small-image stem for 32x32 inputs) " + _NEW_MODEL.format(2))
    dropout: float | None = _f(None, "dropout before the classifier (default: the preset's)")
    conv_type: Literal["separable", "full"] | None = _f(
        None, "separable (MobileNet) or full 3x3 convs (Table 4 baseline) " + _NEW_MODEL.format("separable"))
    shallow: bool | None = _f(
        None, "drop the five 14x14 blocks (the paper's Table 5 baseline) " + _NEW_MODEL.format(False))
    in_chans: int | None = _f(None, "input channels " + _NEW_MODEL.format(3))
    # data
    data: str | None = _f(None, "training data: folder, .zip, .tar, cifar10:<path>#train, digits#train")
    val_data: str | None = _f(None, "validation data (default: split val_fraction off the training data)")
    val_fraction: float = _f(0.1, "fraction of the training data held out when val_data is not given")
    split_seed: int = _f(0, "seed of the train/val split")
    augment: Literal["imagenet", "cifar", "none"] = _f("imagenet", "training augmentation")
    cutout: int = _f(0, "cutout square size in pixels (0: off; with device_data)")
    normalization: Literal["imagenet", "tf"] | None = _f(
        None, "input normalisation (tf: pixels to [-1, 1]); default: the weights' own with --weights or --pretrained, "
              "else imagenet")
    crop_fraction: float = _f(0.875, "central crop fraction at evaluation")
    device_data: bool = _f(False, "decode the data once into one uint8 tensor on the device and augment whole "
                                  "batches there (small sets such as CIFAR-10; augment cifar or none)")
    label_smoothing: float = _f(0.0, "label smoothing of the cross-entropy")
    # distillation and fine-tuning
    teacher: str | None = _f(None, "teacher weights file for knowledge distillation")
    distill_alpha: float = _f(0.5, "weight of the distillation loss (1 - alpha on the labels)")
    distill_temperature: float = _f(4.0, "softmax temperature of the distillation loss")
    weights: str | None = _f(None, "initial weights file; the classifier is replaced when the class count differs")
    pretrained: bool = _f(False, "start from the published ImageNet weights of --model, from the pretrained cache "
                                 "(see `mobilenet pretrained`)")
    freeze_backbone_epochs: int = _f(0, "train only the classifier for this many epochs first")
    head_lr_mult: float = _f(1.0, "learning-rate factor of the classifier (e.g. 10: a new head on pretrained weights)")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        _check(0 <= self.val_fraction < 1, f"val_fraction must be in [0, 1), got {self.val_fraction}")
        _check(0 <= self.distill_alpha <= 1, f"distill_alpha must be in [0, 1], got {self.distill_alpha}")
        _check(self.distill_temperature > 0, f"distill_temperature must be > 0, got {self.distill_temperature}")
        _check(self.cutout >= 0, f"cutout must be >= 0, got {self.cutout}")
        _check(self.freeze_backbone_epochs >= 0,
               f"freeze_backbone_epochs must be >= 0, got {self.freeze_backbone_epochs}")
        _check(self.head_lr_mult > 0, f"head_lr_mult must be > 0, got {self.head_lr_mult}")
        _check(not self.pretrained or bool(self.model), "pretrained needs the variant: add --model NAME, e.g. "
                                                        "--model mobilenet_v1_025_128")
        _check(not (self.pretrained and self.weights), "give --pretrained or --weights, not both")
        _check(self.in_chans in (None, 3), f"in_chans must be 3: the training data are RGB images, got {self.in_chans}")
        _check(not self.device_data or self.augment in ("cifar", "none"),
               f"device_data augments batches on the device: augment must be cifar or none, got {self.augment!r}")
        _check(not self.cutout or self.device_data, "cutout is a device_data augmentation: add --device-data")
        _check(self.width_mult is None or self.width_mult > 0, f"width_mult must be > 0, got {self.width_mult}")
        _check(self.dropout is None or 0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        _check(0 < self.crop_fraction <= 1, f"crop_fraction must be in (0, 1], got {self.crop_fraction}")


@dataclass(frozen=True)
class DetectConfig(EngineConfig):
    """A detection run (``mobilenet detect train``): data, model and loss; recipes in ``configs/ssd_*.toml``."""

    # different defaults from classification's
    epochs: int = _f(100, "number of epochs")
    batch_size: int = _f(32, "GLOBAL batch per optimiser step (at most the training set's size)")
    lr: float = _f(0.01, "base learning rate")
    warmup_epochs: float = _f(1.0, "linear warm-up length in epochs")
    warmup_start: float = _f(0.01, "learning rate at the start of the warm-up, as a fraction of lr")
    grad_clip: float = _f(10.0, "clip the global gradient norm to this (0: off); big early box-loss gradients")
    workers: int = _f(0, "DataLoader worker processes per rank")
    out: str | None = _f(None, "run folder (required)")
    # data
    data: str | None = _f(None, "dataset root: VOC folder (VOCdevkit or VOC2007), KITTI training/ folder, or "
                                "COCO annotation JSON")
    data_format: Literal["voc", "kitti", "coco"] = _f("voc", "dataset format")
    split: str = _f("trainval", "VOC ImageSets/Main list name; KITTI all|train|val")
    val_split: str | None = _f(None, "split to evaluate on during training (VOC: e.g. test; KITTI: val)")
    classes: str | list | None = _f(None, "comma-separated class names (default: the format's standard classes)")
    image_dir: str | None = _f(None, "COCO: folder of the images (default: beside the JSON)")
    val_fraction: float = _f(0.2, "KITTI seeded split: fraction held out")
    augment: bool = _f(True, "training augmentation (photometric, zoom-out, IoU crop, flip)")
    # model
    weights: str | None = _f(None, "start from this detector (e.g. the converted COCO SSD); class heads are "
                                   "replaced when the class count differs")
    backbone_weights: str | None = _f(None, "MobileNet v1 classification weights for the backbone")
    width_mult: float = _f(1.0, "alpha of a new model (--weights keep theirs)")
    image_size: int | str | None = _f(None, "input size: N or HxW (e.g. 384x1248 for KITTI); default: the "
                                            "--weights' size, else 300")
    ssdlite: bool = _f(False, "depthwise separable extras and predictors (a new model)")
    freeze_bn: bool = _f(False, "keep BatchNorm statistics fixed (automatic when --weights is an imported .tflite, "
                                "whose BN is folded)")
    # loss and evaluation
    classification: Literal["softmax", "focal"] = _f("softmax", "classification loss")
    neg_pos_ratio: float = _f(3.0, "hard-negative mining: negatives per positive")
    matched_threshold: float = _f(0.5, "IoU from which an anchor matches a box")
    unmatched_threshold: float = _f(0.5, "IoU below which an anchor is background (between the two: ignored)")
    metric: Literal["voc", "voc07", "kitti", "coco"] | None = _f(None, "default: kitti for KITTI, else voc")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.metric is None:
            object.__setattr__(self, "metric", "kitti" if self.data_format == "kitti" else "voc")
        _check(self.width_mult > 0, f"width_mult must be > 0, got {self.width_mult}")
        _check(0 <= self.val_fraction < 1, f"val_fraction must be in [0, 1), got {self.val_fraction}")
        _check(self.neg_pos_ratio > 0, f"neg_pos_ratio must be > 0, got {self.neg_pos_ratio}")
        _check(0 < self.unmatched_threshold <= self.matched_threshold <= 1,
               f"need 0 < unmatched_threshold <= matched_threshold <= 1, got {self.unmatched_threshold}, "
               f"{self.matched_threshold}")
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
        """``classes`` as a list (None: the format's standard classes)."""
        if self.classes is None:
            return None
        names = self.classes if isinstance(self.classes, list) else self.classes.split(",")
        return [c.strip() for c in names if c.strip()]


CONFIGS: tuple[type[EngineConfig], ...] = (TrainConfig, DetectConfig)
FIELDS = {f.name: f for f in fields(TrainConfig)}


def _hint(cls: type) -> Any:
    """For an unknown key: name the other task whose option it is (a detection recipe given to `train` ...)."""
    def hint(key: str) -> str | None:
        if cls is TrainConfig and key in {f.name for f in fields(DetectConfig)}:
            return "a detection option: is this a detection recipe? use `mobilenet detect train --config`"
        if cls is DetectConfig and key in FIELDS:
            return "a classification option: is this a classification recipe? use `mobilenet train --config`"
        return None
    return hint


def _coerce(d: dict[str, Any], source: str, cls: type) -> dict[str, Any]:
    return coerce(d, source, cls, hint=_hint(cls))


def apply_model_name(d: dict[str, Any]) -> dict[str, Any]:
    """A named variant sets width_mult and resolution unless those are given explicitly too."""
    name = d.get("model")
    if not name:
        return d
    from .zoo import variant_config

    cfg = variant_config(name)  # raises with the closest names for an unknown one
    return {"width_mult": cfg.width_mult, "resolution": cfg.resolution, **d}


def resolve(recipe: str | Path | None = None, overrides: dict[str, Any] | None = None, cls: type[C] = TrainConfig,
            *, defaults: dict[str, Any] | None = None) -> C:
    """The dataclass's defaults, then ``defaults`` (e.g. a command's own), then the TOML ``recipe``'s keys,
    then ``overrides`` (e.g. the flags given): later wins."""
    merged: dict[str, Any] = dict(_coerce(defaults or {}, "defaults", cls))
    if recipe is not None:
        merged.update(_coerce(flatten_tables(read_toml(recipe), str(recipe)), str(recipe), cls))
    if overrides:
        over = _coerce(overrides, "overrides", cls)
        if "model" in over:  # a model named on the command line beats the recipe's width/resolution
            merged.pop("width_mult", None)
            merged.pop("resolution", None)
        merged.update(over)
    return cls(**(apply_model_name(merged) if cls is TrainConfig else merged))


def add_config_flags(parser: argparse.ArgumentParser, cls: type[EngineConfig] = TrainConfig, *,
                     flags: dict[str, str] | None = None) -> None:
    """One flag per field of ``cls``, default SUPPRESS so only flags actually given override the recipe."""
    add_flags(parser.add_argument_group("training options (also settable in a TOML recipe)"), cls, flags=flags)


def overrides_from_args(args: argparse.Namespace, cls: type[EngineConfig] = TrainConfig) -> dict[str, Any]:
    """The fields of ``cls`` present in ``args`` (flags the user actually gave)."""
    return given(args, cls)


assert all(f.default is not MISSING for cls in CONFIGS for f in fields(cls))  # every field has a default
