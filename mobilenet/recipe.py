"""Training configuration as typed data: defaults -> TOML recipe -> command-line flags.

``TrainConfig`` is a frozen dataclass; every field is one flag (``lr`` -> ``--lr``,
``channels_last`` -> ``--channels-last/--no-channels-last``) and one TOML key, read and checked by
:mod:`mobilenet.config` (TOML tables only group keys). The resolved config is written into the run
folder and into every checkpoint, so a run can be reproduced from it alone.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from .config import add_flags, coerce, flatten_tables, given, read_toml
from .optim import OPTIMIZERS, SCHEDULES

AUGMENTS = ("imagenet", "cifar", "none")
AMP_MODES = ("none", "bf16", "fp16")
NORMALIZATIONS = ("imagenet", "tf")


def _f(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides the data itself. See ``configs/*.toml`` for recipes."""

    # model
    model: str | None = _f(None, "named variant, e.g. mobilenet_v1_050_160 (sets width_mult and resolution)")
    width_mult: float = _f(1.0, "width multiplier alpha")
    resolution: int = _f(224, "training/eval input size in pixels")
    preset: Literal["paper", "tf", "timm"] = _f("paper", "model preset (paper: ReLU; tf: ReLU6, SAME padding)")
    stem_stride: int = _f(2, "stride of the first conv (1 = small-image stem for 32x32 inputs)")
    dropout: float | None = _f(None, "dropout before the classifier (default: the preset's)")
    # data
    data: str | None = _f(None, "training data: folder, .zip, .tar, cifar10:<path>#train, digits#train")
    val_data: str | None = _f(None, "validation data (default: split val_fraction off the training data)")
    val_fraction: float = _f(0.1, "fraction of the training data held out when val_data is not given")
    split_seed: int = _f(0, "seed of the train/val split")
    augment: Literal["imagenet", "cifar", "none"] = _f("imagenet", "training augmentation")
    normalization: Literal["imagenet", "tf"] = _f("imagenet", "input normalisation (tf: pixels to [-1, 1])")
    crop_fraction: float = _f(0.875, "central crop fraction at evaluation")
    workers: int = _f(2, "DataLoader worker processes per rank")
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
    decay_rate: float = _f(0.94, "exponential/step schedule: factor per decay_epochs")
    decay_epochs: float = _f(2.0, "exponential/step schedule: epochs per decay")
    min_lr_ratio: float = _f(0.0, "cosine schedule: final lr as a fraction of lr")
    label_smoothing: float = _f(0.0, "label smoothing of the cross-entropy")
    grad_clip: float = _f(0.0, "clip the global gradient norm to this (0: off)")
    ema_decay: float = _f(0.0, "EMA of weights decay, e.g. 0.9999 (0: off); validation uses the EMA")
    # speed
    amp: Literal["none", "bf16", "fp16"] = _f("none", "mixed precision autocast (fp16 adds a grad scaler)")
    channels_last: bool = _f(False, "channels_last memory format")
    compile: bool = _f(False, "torch.compile the model")
    device: str = _f("auto", "auto, cpu, cuda, cuda:N")
    # distillation and fine-tuning
    teacher: str | None = _f(None, "teacher weights file for knowledge distillation")
    distill_alpha: float = _f(0.5, "weight of the distillation loss (1 - alpha on the labels)")
    distill_temperature: float = _f(4.0, "softmax temperature of the distillation loss")
    weights: str | None = _f(None, "initial weights file; the classifier is replaced when the class count differs")
    freeze_backbone_epochs: int = _f(0, "train only the classifier for this many epochs first")
    # bookkeeping
    seed: int = _f(0, "random seed")
    deterministic: bool = _f(False, "deterministic algorithms (slower; exact resume on CPU)")
    out: str = _f("runs/train", "run folder")
    save_every_steps: int = _f(0, "also save the training state every N optimiser steps (0: epoch ends only)")
    keep_last: int = _f(2, "training states kept besides the best")
    resume: str | None = _f(None, "'auto' (latest state in the run folder) or a state folder")
    sync_bn: bool = _f(False, "SyncBatchNorm across ranks (GPU only)")
    tensorboard: bool = _f(True, "log to TensorBoard when it is installed")
    curves: bool = _f(True, "save curves.png at the end (when matplotlib is installed)")
    max_steps: int = _f(0, "stop after this many optimiser steps in total (0: no limit)")
    log_every_steps: int = _f(10, "read loss/accuracy back from the device every N steps (progress bar)")

    def __post_init__(self) -> None:
        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)

        check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.accum_steps >= 1, f"accum_steps must be >= 1, got {self.accum_steps}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        check(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        check(self.augment in AUGMENTS, f"augment must be one of {', '.join(AUGMENTS)}, got {self.augment!r}")
        check(self.amp in AMP_MODES, f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        check(self.normalization in NORMALIZATIONS,
              f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {self.normalization!r}")
        check(0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        check(0 <= self.val_fraction < 1, f"val_fraction must be in [0, 1), got {self.val_fraction}")
        check(self.ema_decay == 0 or 0 < self.ema_decay < 1, f"ema_decay must be 0 or in (0, 1), got {self.ema_decay}")
        check(0 <= self.distill_alpha <= 1, f"distill_alpha must be in [0, 1], got {self.distill_alpha}")
        check(self.distill_temperature > 0, f"distill_temperature must be > 0, got {self.distill_temperature}")
        check(self.workers >= 0, f"workers must be >= 0, got {self.workers}")
        check(self.log_every_steps >= 1, f"log_every_steps must be >= 1, got {self.log_every_steps}")
        check(self.keep_last >= 1, f"keep_last must be >= 1, got {self.keep_last}")
        check(self.save_every_steps >= 0, f"save_every_steps must be >= 0, got {self.save_every_steps}")
        check(self.freeze_backbone_epochs >= 0,
              f"freeze_backbone_epochs must be >= 0, got {self.freeze_backbone_epochs}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "config") -> TrainConfig:
        return cls(**_coerce(flatten_tables(d, source), source))

    def replace(self, **changes: Any) -> TrainConfig:
        return replace(self, **_coerce(changes, "overrides"))

    def save_json(self, path: str | Path) -> Path:
        from .checkpoint import atomic_write

        path = Path(path)
        with atomic_write(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")
        return path


FIELDS = {f.name: f for f in fields(TrainConfig)}


def _detection_hint(key: str) -> str | None:
    from .detection.train import DetSetup, DetTrainConfig

    if key in {f.name for cls in (DetTrainConfig, DetSetup) for f in fields(cls)}:
        return "a detection option: is this a detection recipe? use `mobilenet detect train --config`"
    return None


def _coerce(d: dict[str, Any], source: str) -> dict[str, Any]:
    return coerce(d, source, TrainConfig, hint=_detection_hint)


def apply_model_name(d: dict[str, Any]) -> dict[str, Any]:
    """A named variant sets width_mult and resolution unless those are given explicitly too."""
    name = d.get("model")
    if not name:
        return d
    from .zoo import variant_config

    cfg = variant_config(name)  # raises with the closest names for an unknown one
    return {"width_mult": cfg.width_mult, "resolution": cfg.resolution, **d}


def resolve(recipe: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the recipe file's keys, then ``overrides`` (e.g. from flags): later wins."""
    merged: dict[str, Any] = {}
    if recipe is not None:
        merged.update(_coerce(flatten_tables(read_toml(recipe), str(recipe)), str(recipe)))
    if overrides:
        over = _coerce(overrides, "overrides")
        if "model" in over:  # a model named on the command line beats the recipe's width/resolution
            merged.pop("width_mult", None)
            merged.pop("resolution", None)
        merged.update(over)
    return TrainConfig(**apply_model_name(merged))


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, default SUPPRESS so only flags actually given override the recipe."""
    add_flags(parser.add_argument_group("training options (also settable in a TOML recipe)"), TrainConfig)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields present in ``args`` (flags the user actually gave)."""
    return given(args, TrainConfig)


assert all(f.default is not MISSING for f in fields(TrainConfig))  # every field has a default
