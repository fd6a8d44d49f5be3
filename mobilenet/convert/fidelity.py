"""TF Lite fidelity: run an imported model on the uint8 activation grids its ``.tflite`` file ran on.

A quantized ``.tflite`` file computes every activation in uint8: each op's output is rounded to
that tensor's grid ``real = (q - zero_point) * scale``, ``q`` an integer in ``[quant_min,
quant_max]`` (0..255, narrowed by a fused ReLU6 to the integers of [0, 6]). Our import runs the
same (dequantized) weights in float, so its activations sit between those grid points; the
differences are small but flip near-ties (the top-1 of a classifier, which of two overlapping
anchors NMS keeps). :func:`uint8_activations` puts the grids back with forward hooks that round
each recorded tensor to its grid, which is what the interpreter does.

The importers record the grids in the weights' ``extra`` metadata, so they survive save/load:

* ``activation_grids``: name -> ``{"scale", "zero_point", "quant_min", "quant_max"}``, exactly as
  in the file (:class:`ActivationGrid`). Names are our module names (a forward hook rounds the
  module's output: ``stem``, ``blocks.3.pw``, ``classifier``; ``backbone.blocks.0.dw``,
  ``extras.1.conv``, ``box_heads.2``, ``cls_heads.5`` in the SSD) or one of the special points:

  ========================  =====================================================================
  ``input``                 the model's input (a pre-hook on the model)
  ``pool``                  the classifier's input: TF Lite's ``AVERAGE_POOL_2D`` output
  ``box_encodings``         the SSD's concatenated box offsets (B, A, 4): TF Lite's ``concat``
  ``class_logits``          the SSD's concatenated class logits (B, A, C+1): ``concat_1``
  ``class_scores``          the grid of the SSD's ``LOGISTIC`` output (scale 1/256); applied to the
                            logits as ``logit(rounded sigmoid)``, so the sigmoid in
                            post-processing gives the interpreter's scores
  ========================  =====================================================================

* ``activation_ranges`` (older imports, :func:`mobilenet.deploy.quantize.recorded_grids`): name ->
  [min, max]; a 256-level grid is derived from it (scale (max - min) / 255, zero point -min / scale).

Usage::

    with uint8_activations(model):
        logits = model(x)          # every recorded activation rounded to its uint8 grid
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

# Points that are not module outputs (see the module docstring).
INPUT, POOL = "input", "pool"
SSD_OUTPUTS = ("box_encodings", "class_logits")  # elements 0 and 1 of an SSD's (boxes, logits) output
SCORES = "class_scores"
_QUANT_MIN, _QUANT_MAX = 0, 255


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest, ties away from zero: TF Lite's rounding (``std::round``, fixed-point requantize)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


@dataclass(frozen=True)
class ActivationGrid:
    """A uint8 activation grid: ``real = (q - zero_point) * scale`` for integer ``q`` in [quant_min, quant_max]."""

    scale: float
    zero_point: int
    quant_min: int = _QUANT_MIN
    quant_max: int = _QUANT_MAX

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ValueError(f"activation grid scale must be > 0, got {self.scale!r}")
        if not self.quant_min <= self.quant_max:
            raise ValueError(f"activation grid quant_min {self.quant_min} > quant_max {self.quant_max}")

    @classmethod
    def from_range(cls, lo: float, hi: float) -> ActivationGrid:
        """The 256-level grid whose ends are ``lo`` and ``hi`` (for ranges recorded without scale/zero point)."""
        scale = (hi - lo) / (_QUANT_MAX - _QUANT_MIN)
        zero_point = int(min(max(round(_QUANT_MIN - lo / scale), _QUANT_MIN), _QUANT_MAX))
        return cls(scale=scale, zero_point=zero_point)

    @classmethod
    def from_tflite(cls, scale: float, zero_point: int, *, dtype: str = "uint8", activation: str | None = None
                    ) -> ActivationGrid:
        """A TF Lite tensor's grid, narrowed as the interpreter clamps a fused ``RELU``/``RELU6``.

        An int8 tensor is expressed on the equivalent uint8 grid (zero point + 128): the same real values.
        """
        if dtype not in ("uint8", "int8"):
            raise ValueError(f"only uint8/int8 activations have a grid here, got {dtype!r}")
        zp = int(zero_point) + (128 if dtype == "int8" else 0)
        qmin, qmax = _QUANT_MIN, _QUANT_MAX
        # TF Lite's CalculateActivationRangeQuantized: the integer images of 0 and 6, clamped to the type
        if activation in ("RELU", "RELU6"):
            qmin = max(qmin, zp)
        if activation == "RELU6":
            qmax = min(qmax, zp + int(_round_half_away(torch.tensor(6.0 / float(scale), dtype=torch.float32))))
        return cls(scale=float(scale), zero_point=zp, quant_min=qmin, quant_max=qmax)

    @property
    def range(self) -> tuple[float, float]:
        """[min, max] real values on the grid."""
        return ((self.quant_min - self.zero_point) * self.scale, (self.quant_max - self.zero_point) * self.scale)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ActivationGrid:
        return cls(scale=float(d["scale"]), zero_point=int(d["zero_point"]),
                   quant_min=int(d.get("quant_min", _QUANT_MIN)), quant_max=int(d.get("quant_max", _QUANT_MAX)))

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Real values -> the integers ``q`` (as floats of ``x``'s dtype), rounded and clamped."""
        return (_round_half_away(x / self.scale) + self.zero_point).clamp(self.quant_min, self.quant_max)

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Round ``x`` to the nearest grid value (clamped to the grid's range); same shape and dtype."""
        return (self.quantize(x) - self.zero_point) * self.scale


def recorded_activation_grids(model: nn.Module) -> dict[str, ActivationGrid]:
    """The activation grids an importer recorded in ``model.weights_metadata["extra"]`` (see module doc).

    Exact ``activation_grids`` win; names only in ``activation_ranges`` get the 256-level grid of
    their range. Raises ``ValueError`` when the model carries neither (not a quantized import).
    """
    from ..deploy.quantize import recorded_grids

    extra = (getattr(model, "weights_metadata", None) or {}).get("extra") or {}
    ranges, _ = recorded_grids(model)
    grids = {name: ActivationGrid.from_range(lo, hi) for name, (lo, hi) in ranges.items()}
    grids.update({str(k): ActivationGrid.from_dict(v) for k, v in (extra.get("activation_grids") or {}).items()})
    if not grids:
        source = extra.get("source", "this model")
        raise ValueError(f"{type(model).__name__} from {source} carries no recorded activation grids "
                         "(weights_metadata['extra'] has no 'activation_grids' or 'activation_ranges'): "
                         "only an import of a quantized .tflite file has them")
    return grids


def _logit_of_scores(grid: ActivationGrid, logits: torch.Tensor) -> torch.Tensor:
    """Logits whose sigmoid is the interpreter's uint8 LOGISTIC output (computed in float64, then cast).

    TF Lite's uint8 LOGISTIC is a table: sigmoid of the dequantized input, rounded to the output
    grid. Equal grid values give equal logits, so ties between anchors stay exact ties.
    """
    p = grid.fake_quantize(torch.sigmoid(logits.double()))
    return (torch.log(p) - torch.log1p(-p)).to(logits.dtype)  # p = 0 -> -inf, p = 1 -> inf: sigmoid gives 0, 1


def _output_hook(grid: ActivationGrid) -> Any:
    def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        return grid.fake_quantize(output)
    return hook


def _input_hook(grid: ActivationGrid) -> Any:
    def hook(_module: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
        return (grid.fake_quantize(inputs[0]), *inputs[1:])
    return hook


def _ssd_output_hook(boxes_grid: ActivationGrid | None, logits_grid: ActivationGrid | None,
                     scores_grid: ActivationGrid | None) -> Any:
    def hook(_module: nn.Module, _inputs: Any, output: tuple[torch.Tensor, torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor]:
        boxes, logits = output  # (B, A, 4) offsets, (B, A, C+1) logits
        if boxes_grid is not None:
            boxes = boxes_grid.fake_quantize(boxes)
        if logits_grid is not None:
            logits = logits_grid.fake_quantize(logits)
        if scores_grid is not None:
            logits = _logit_of_scores(scores_grid, logits)
        return boxes, logits
    return hook


def add_activation_hooks(model: nn.Module, grids: dict[str, ActivationGrid] | None = None
                         ) -> list[torch.utils.hooks.RemovableHandle]:
    """Register the rounding hooks on ``model`` (default grids: the recorded ones); returns their handles.

    Prefer :func:`uint8_activations`, which removes them again. Raises ``ValueError`` naming a
    grid that matches no module of the model, or a score grid on a model without sigmoid scores.
    """
    grids = recorded_activation_grids(model) if grids is None else grids
    modules = dict(model.named_modules())
    handles = []
    try:
        for name, grid in grids.items():
            if name == INPUT:
                handles.append(model.register_forward_pre_hook(_input_hook(grid)))
            elif name == POOL:
                if not isinstance(modules.get("classifier"), nn.Module):
                    raise ValueError(f"grid {POOL!r} rounds the classifier's input, but "
                                     f"{type(model).__name__} has no 'classifier' module")
                handles.append(modules["classifier"].register_forward_pre_hook(_input_hook(grid)))
            elif name not in (*SSD_OUTPUTS, SCORES):
                if name not in modules or name == "":
                    raise ValueError(f"recorded activation grid {name!r} matches no module of "
                                     f"{type(model).__name__}")
                handles.append(modules[name].register_forward_hook(_output_hook(grid)))
        boxes, logits, scores = grids.get(SSD_OUTPUTS[0]), grids.get(SSD_OUTPUTS[1]), grids.get(SCORES)
        if boxes is not None or logits is not None or scores is not None:
            post = getattr(getattr(model, "config", None), "postprocess", None)
            if scores is not None and getattr(post, "score_fn", None) != "sigmoid":
                raise ValueError(f"grid {SCORES!r} is the grid of sigmoid scores, but {type(model).__name__} "
                                 f"scores with {getattr(post, 'score_fn', None)!r}")
            handles.append(model.register_forward_hook(_ssd_output_hook(boxes, logits, scores)))
    except BaseException:
        for h in handles:
            h.remove()
        raise
    return handles


@contextmanager
def uint8_activations(model: nn.Module, grids: dict[str, ActivationGrid] | None = None) -> Iterator[nn.Module]:
    """Within the block, ``model`` rounds every recorded activation to its uint8 grid (TF Lite fidelity).

    ``grids`` defaults to :func:`recorded_activation_grids` (``ValueError`` if the model has none).
    The hooks are removed on exit, also after an exception.
    """
    handles = add_activation_hooks(model, grids)
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
