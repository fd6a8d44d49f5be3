"""What travels with a model's weights, as one typed record: :class:`WeightsInfo`.

Every weights file carries, besides the architecture and config that rebuild the model, the class
names, the preprocessing, where the weights came from, the grids of a quantized source and how they
were trained. ``mobilenet.load`` and the importers attach it to the model as ``model.weights_info``;
read it with :func:`weights_info` (an empty record for a model that has none).

In the file it is the JSON header of the safetensors file, in the layout every version has written
(so old files load unchanged)::

    {"architecture", "config", "format_version",          # written by mobilenet.checkpoint.save
     "class_names": [...] | null, "preprocessing": {...} | null,
     "extra": {"source", "format", <source details>,       # Source
               "class_labels",                             # WeightsInfo.class_labels
               "activation_grids", "activation_ranges",    # Quantization
               "weight_quantization",
               "train_config", "epoch", "global_step", "metrics",   # Training
               <anything else: kept as WeightsInfo.extra>}}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .preprocessing import Preprocessing
from .tflite.grid import ActivationGrid

# Recorded activations that are not the output of a module (mobilenet.tflite.fidelity places them).
INPUT, POOL = "input", "pool"  # the model's input; the classifier's input (TF Lite's AVERAGE_POOL_2D output)
BOX_ENCODINGS, CLASS_LOGITS = "box_encodings", "class_logits"  # an SSD's concatenated outputs 0 and 1
CLASS_SCORES = "class_scores"  # the grid of an SSD's uint8 LOGISTIC (sigmoid scores)
POINTS = (INPUT, POOL, BOX_ENCODINGS, CLASS_LOGITS, CLASS_SCORES)

_SOURCE_DETAILS = ("drop_background", "quantized", "input_dtype", "postprocess_op")
_QUANTIZATION_KEYS = ("activation_grids", "activation_ranges", "weight_quantization")
_TRAINING_KEYS = ("train_config", "epoch", "global_step", "metrics")


@dataclass(frozen=True)
class WeightGrid:
    """The integer grid a weight tensor was stored on: ``real = (q - zero_point) * scale`` along ``axis``
    (one scale per tensor, or one per slice of ``axis``), ``q`` in ``[quant_min, quant_max]``."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    quant_min: int
    quant_max: int
    axis: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))
        object.__setattr__(self, "zero_point", tuple(int(v) for v in self.zero_point))
        if len(self.scale) != len(self.zero_point) or not self.scale:
            raise ValueError(f"a weight grid needs one zero point per scale, got {len(self.scale)} scales and "
                             f"{len(self.zero_point)} zero points")

    def to_dict(self) -> dict[str, Any]:
        return {"scale": list(self.scale), "zero_point": list(self.zero_point), "quant_min": self.quant_min,
                "quant_max": self.quant_max, "axis": self.axis}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WeightGrid:
        return cls(scale=tuple(d["scale"]), zero_point=tuple(d["zero_point"]), quant_min=int(d["quant_min"]),
                   quant_max=int(d["quant_max"]), axis=int(d.get("axis", 0)))


@dataclass(frozen=True)
class Quantization:
    """The grids a quantized (quantization-aware trained) source ran on, by our module and state-dict names.

    ``activations``: each recorded activation's exact grid (names: module outputs such as ``blocks.3.pw``,
    or one of :data:`POINTS`). ``ranges``: [min, max] of activations as older imports recorded them
    (read :meth:`activation_ranges`, which derives them from the grids otherwise). ``weights``: the grid
    each stored kernel lives on (state-dict name -> :class:`WeightGrid`).
    """

    activations: dict[str, ActivationGrid] = field(default_factory=dict)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    weights: dict[str, WeightGrid] = field(default_factory=dict)

    def activation_ranges(self) -> dict[str, tuple[float, float]]:
        """[min, max] of the input and every module output with a grid: the whole 0..255 range of the grid
        (the tensor's range in the file; a fused ReLU6 narrows the grid's clamp, not the range)."""
        if self.ranges:
            return dict(self.ranges)
        return {name: ((0 - g.zero_point) * g.scale, (255 - g.zero_point) * g.scale)
                for name, g in self.activations.items() if name == INPUT or name not in POINTS}

    def to_extra(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.activations:
            out["activation_grids"] = {k: g.to_dict() for k, g in self.activations.items()}
        if self.ranges:
            out["activation_ranges"] = {k: list(v) for k, v in self.ranges.items()}
        if self.weights:
            out["weight_quantization"] = {k: g.to_dict() for k, g in self.weights.items()}
        return out

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any]) -> Quantization | None:
        """The record of a header's ``extra`` (None when it has no grids)."""
        if not any(extra.get(k) for k in _QUANTIZATION_KEYS):
            return None
        return cls(
            activations={str(k): ActivationGrid.from_dict(v) for k, v in (extra.get("activation_grids") or {}).items()},
            ranges={str(k): (float(v[0]), float(v[1])) for k, v in (extra.get("activation_ranges") or {}).items()},
            weights={str(k): WeightGrid.from_dict(v) for k, v in (extra.get("weight_quantization") or {}).items()})


@dataclass(frozen=True)
class Source:
    """Where imported weights came from: the format (``keras``, ``tflite``, ``slim``, ``caffe``, ``timm``), the
    file, and what the importer learnt on the way (``details``: ``drop_background``; ``quantized``,
    ``input_dtype`` of a ``.tflite``; ``postprocess_op``: the options of an SSD's post-processing op)."""

    format: str | None = None
    file: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_extra(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.file, "format": self.format}
        out.update(self.details)
        return out


@dataclass(frozen=True)
class Training:
    """How weights trained here came about: the resolved training config, where the run stood, its metrics."""

    config: dict[str, Any] = field(default_factory=dict)
    epoch: int | None = None
    global_step: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_extra(self) -> dict[str, Any]:
        out: dict[str, Any] = {"train_config": self.config}
        if self.epoch is not None:
            out["epoch"] = self.epoch
        if self.global_step is not None:
            out["global_step"] = self.global_step
        if self.metrics:
            out["metrics"] = self.metrics
        return out


@dataclass(frozen=True)
class WeightsInfo:
    """Everything that travels with weights besides the architecture (see the module doc).

    ``classes``: the class names, in output order (WordNet ids for ImageNet imports); ``class_labels``:
    human-readable names beside them ("tench, Tinca tinca"); ``preprocessing``: how images become inputs;
    ``source``: the file it was imported from; ``quantization``: the grids of a quantized source;
    ``training``: how it was trained here; ``extra``: header keys this version does not know, kept so that
    loading and saving again loses nothing.
    """

    classes: list[str] | None = None
    class_labels: list[str] | None = None
    preprocessing: Preprocessing | None = None
    source: Source | None = None
    quantization: Quantization | None = None
    training: Training | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> WeightsInfo:
        """A copy with ``changes`` applied (``classes=...``, ``preprocessing=...``)."""
        return replace(self, **changes)

    def to_header(self) -> dict[str, Any]:
        """The header keys of a weights file (``class_names``, ``preprocessing``, ``extra``)."""
        extra: dict[str, Any] = {}
        if self.source is not None:
            extra.update(self.source.to_extra())
        if self.class_labels is not None:
            extra["class_labels"] = list(self.class_labels)
        if self.quantization is not None:
            extra.update(self.quantization.to_extra())
        if self.training is not None:
            extra.update(self.training.to_extra())
        extra.update(self.extra)
        return {"class_names": list(self.classes) if self.classes is not None else None,
                "preprocessing": self.preprocessing.to_dict() if self.preprocessing is not None else None,
                "extra": extra}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> WeightsInfo:
        """The record of a weights file's header, written by any version (missing keys: None/empty)."""
        extra = dict(header.get("extra") or {})
        source = None
        if "source" in extra or "format" in extra:
            source = Source(format=extra.get("format"), file=extra.get("source"),
                            details={k: extra[k] for k in _SOURCE_DETAILS if k in extra})
        training = None
        if "train_config" in extra:
            training = Training(config=dict(extra.get("train_config") or {}), epoch=extra.get("epoch"),
                                global_step=extra.get("global_step"), metrics=dict(extra.get("metrics") or {}))
        known = {"source", "format", "class_labels", *_SOURCE_DETAILS, *_QUANTIZATION_KEYS,
                 *(_TRAINING_KEYS if training is not None else ())}
        labels = extra.get("class_labels")
        pre = header.get("preprocessing")
        names = header.get("class_names")
        return cls(classes=list(names) if names is not None else None,
                   class_labels=[str(x) for x in labels] if isinstance(labels, list) else None,
                   preprocessing=Preprocessing.from_dict(pre) if pre else None,
                   source=source, quantization=Quantization.from_extra(extra), training=training,
                   extra={k: v for k, v in extra.items() if k not in known})


def weights_info(model: Any) -> WeightsInfo:
    """The record attached to ``model`` (by ``mobilenet.load`` or an importer), or an empty one."""
    info = getattr(model, "weights_info", None)
    return info if isinstance(info, WeightsInfo) else WeightsInfo()


__all__ = ["POINTS", "Quantization", "Source", "Training", "WeightGrid", "WeightsInfo", "weights_info"]
