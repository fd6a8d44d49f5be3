"""TF Lite fidelity: run an imported model on the uint8 activation grids its ``.tflite`` file ran on.

A quantized ``.tflite`` file computes every activation in uint8: each op's output is rounded to
that tensor's grid ``real = (q - zero_point) * scale``, ``q`` an integer in ``[quant_min,
quant_max]`` (0..255, narrowed by a fused ReLU6 to the integers of [0, 6]). Our import runs the
same (dequantized) weights in float, so its activations sit between those grid points; the
differences are small but flip near-ties (the top-1 of a classifier, which of two overlapping
anchors NMS keeps). :func:`uint8_activations` puts the grids back with forward hooks that round
each recorded tensor to its grid, which is what the interpreter does.

Two levels. Rounding each float output to its grid gets close but not exact: the interpreter
requantizes an exact int32 accumulator, and a float32 conv lands on the other side of a rounding
boundary now and then, an error the next layers carry on. *Exact* mode (the default when the
import recorded accumulator scales and weight grids) runs the model in float64 with the weights
snapped to their grids, recovers each conv's accumulator exactly and requantizes it as the
default interpreter (XNNPACK) does: ``rint(float32(acc) * float32(multiplier))``; the SSD heads'
requantization onto the concatenations' grids and the uint8 ``LOGISTIC`` use TF Lite's own float32
tables. Measured with ``ai-edge-litert``: the detector's box encodings and scores (the inputs of
its post-processing op) equal the interpreter's bit for bit, and the classifier's logits through
a softmax rounded to 1/256 give the interpreter's uint8 probabilities on all 100 ImageNet photos.
TF Lite's other kernel sets (``builtin``, ``reference``) requantize with fixed-point multipliers
and differ from XNNPACK by one step here and there; ``kernels=`` reproduces either, also bit for bit.

The importers record the grids in the weights' record (``model.weights_info.quantization``, a
:class:`mobilenet.weights.Quantization`), so they survive save/load:

* ``activations``: name -> :class:`~mobilenet.tflite.grid.ActivationGrid` (scale, zero point, quant_min,
  quant_max, accumulator scale), exactly as in the file. Names are our module
  names (a forward hook rounds the module's output: ``stem``, ``blocks.3.pw``, ``classifier``;
  ``backbone.blocks.0.dw``, ``extras.1.conv``, ``box_heads.2``, ``cls_heads.5`` in the SSD) or one
  of the special points:

  ========================  =====================================================================
  ``input``                 the model's input (a pre-hook on the model)
  ``pool``                  the classifier's input: TF Lite's ``AVERAGE_POOL_2D`` output
  ``box_encodings``         the SSD's concatenated box offsets (B, A, 4): TF Lite's ``concat``
  ``class_logits``          the SSD's concatenated class logits (B, A, C+1): ``concat_1``; a
                            head's output is moved onto its concat's grid right in the head's hook
                            (the heads are those the model's ``output_sources()`` names)
  ``class_scores``          the grid of the SSD's ``LOGISTIC`` output (scale 1/256); applied to the
                            logits as ``logit(rounded sigmoid)``, so the sigmoid in
                            post-processing gives the interpreter's scores
  ========================  =====================================================================

* ``ranges`` (older imports): name -> [min, max]; a 256-level grid is derived from it (scale
  (max - min) / 255, zero point -min / scale).
* ``weights`` (state-dict name -> :class:`~mobilenet.weights.WeightGrid`): exact mode snaps the weights onto it.

Usage::

    with uint8_activations(model):
        logits = model(x)          # every recorded activation on its uint8 grid, as the interpreter computes
    tflite_parity(ssd, "detect.tflite", photos, fidelity=True)   # mobilenet.tflite.parity
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..weights import BOX_ENCODINGS, CLASS_LOGITS, CLASS_SCORES, INPUT, POINTS, POOL, WeightGrid, weights_info
from .grid import KERNELS, ActivationGrid, logistic_table, requantize_table

SSD_OUTPUTS = (BOX_ENCODINGS, CLASS_LOGITS)  # elements 0 and 1 of an SSD's (boxes, logits) output
SCORES = CLASS_SCORES


def recorded_activation_grids(model: nn.Module) -> dict[str, ActivationGrid]:
    """The activation grids an importer recorded in ``model.weights_info.quantization`` (see module doc).

    Exact grids win; names only in the ranges of an older import get the 256-level grid of their range.
    Raises ``ValueError`` when the model carries neither (not a quantized import).
    """
    info = weights_info(model)
    q = info.quantization
    grids = {name: ActivationGrid.from_range(lo, hi) for name, (lo, hi) in (q.ranges if q else {}).items()}
    grids.update(q.activations if q else {})
    if not grids:
        source = info.source.file if info.source and info.source.file else "this model"
        raise ValueError(f"{type(model).__name__} from {source} carries no recorded activation grids "
                         "(its weights_info has no quantization grids or ranges): "
                         "only an import of a quantized .tflite file has them")
    return grids


def _weight_grids(model: nn.Module) -> dict[str, WeightGrid]:
    q = weights_info(model).quantization
    return q.weights if q else {}


def _logits_of(p: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Logits whose sigmoid is ``p`` (float64 math, then cast): post-processing's sigmoid gives ``p`` back.

    Equal probabilities give equal logits, so ties between anchors stay exact ties; p = 0 -> -inf, 1 -> inf.
    """
    return (torch.log(p) - torch.log1p(-p)).to(dtype)


def _unit_hook(grid: ActivationGrid, exact: str | None, then: torch.Tensor | None) -> Any:
    """``exact``: the kernel set whose requantization to reproduce, or None to round the float output."""
    def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        out = grid.requantize_accumulator(output, exact) if exact else grid.fake_quantize(output)
        if then is not None:  # a head feeding TF Lite's CONCATENATION: moved onto the concat's grid
            out = then.to(out.device)[grid.integers(out)].to(out.dtype)
        return out
    return hook


def _input_hook(grid: ActivationGrid | None, dtype: torch.dtype | None) -> Any:
    def hook(_module: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
        x = inputs[0] if dtype is None else inputs[0].to(dtype)
        return (x if grid is None else grid.fake_quantize(x), *inputs[1:])
    return hook


def _ssd_output_hook(boxes_grid: ActivationGrid | None, logits_grid: ActivationGrid | None,
                     scores_grid: ActivationGrid | None) -> Any:
    table = logistic_table(logits_grid, scores_grid) if logits_grid and scores_grid else None

    def hook(_module: nn.Module, _inputs: Any, output: tuple[torch.Tensor, torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor]:
        boxes, logits = output  # (B, A, 4) offsets, (B, A, C+1) logits
        if boxes_grid is not None:
            boxes = boxes_grid.fake_quantize(boxes)
        if logits_grid is not None:
            logits = logits_grid.fake_quantize(logits)
        if table is not None and logits_grid is not None:
            logits = _logits_of(table.to(logits.device)[logits_grid.integers(logits)], logits.dtype)
        elif scores_grid is not None:
            logits = _logits_of(scores_grid.fake_quantize(torch.sigmoid(logits.double())), logits.dtype)
        return boxes, logits
    return hook


def _cast_output_hook(dtype: torch.dtype) -> Any:
    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return tuple(o.to(dtype) for o in output)
        return output.to(dtype)
    return hook


def _weight_name(modules: dict[str, nn.Module], name: str) -> str | None:
    """State-dict name of the conv weight whose output ``name`` is (a conv-bn-act unit or a bare conv)."""
    module = modules.get(name)
    if isinstance(module, nn.Conv2d):
        return f"{name}.weight"
    if isinstance(getattr(module, "conv", None), nn.Conv2d):
        return f"{name}.conv.weight"
    return None


def _special(name: str) -> bool:
    return name in POINTS


def can_run_exact(model: nn.Module, grids: dict[str, ActivationGrid] | None = None) -> bool:
    """True if every recorded conv output has an accumulator scale and its weight a recorded grid."""
    grids = recorded_activation_grids(model) if grids is None else grids
    weights = _weight_grids(model)
    modules = dict(model.named_modules())
    units = [n for n in grids if not _special(n)]
    return bool(units) and all(grids[n].accumulator_scale and _weight_name(modules, n) in weights for n in units)


def add_activation_hooks(model: nn.Module, grids: dict[str, ActivationGrid] | None = None, *, exact: bool = False,
                         kernels: str = "default") -> list[torch.utils.hooks.RemovableHandle]:
    """Register the rounding hooks on ``model`` (default grids: the recorded ones); returns their handles.

    Prefer :func:`uint8_activations`, which removes them again (and prepares ``exact``: the model in
    float64 with its weights on their grids; ``kernels``: whose requantization). Raises
    ``ValueError`` naming a grid that matches no module of the model, or a score grid on a model
    without sigmoid scores.
    """
    grids = recorded_activation_grids(model) if grids is None else grids
    modules = dict(model.named_modules())
    boxes, logits, scores = grids.get(SSD_OUTPUTS[0]), grids.get(SSD_OUTPUTS[1]), grids.get(SCORES)
    # A model whose forward concatenates several heads into its outputs (the SSD) names them; TF Lite's
    # CONCATENATION requantizes each head onto the concatenation's own grid.
    sources = model.output_sources() if callable(getattr(model, "output_sources", None)) else ()
    concat_of = {head: grids.get(point) for point, heads in zip(SSD_OUTPUTS, sources, strict=False) for head in heads}
    handles = []
    try:
        if INPUT in grids or exact:
            handles.append(model.register_forward_pre_hook(_input_hook(grids.get(INPUT),
                                                                       torch.float64 if exact else None)))
        if POOL in grids:
            if not isinstance(modules.get("classifier"), nn.Module):
                raise ValueError(f"grid {POOL!r} rounds the classifier's input, but "
                                 f"{type(model).__name__} has no 'classifier' module")
            handles.append(modules["classifier"].register_forward_pre_hook(_input_hook(grids[POOL], None)))
        for name, grid in grids.items():
            if _special(name):
                continue
            if name not in modules or name == "":
                raise ValueError(f"recorded activation grid {name!r} matches no module of {type(model).__name__}")
            concat = concat_of.get(name)
            then = requantize_table(grid, concat) if concat is not None else None
            rounding = kernels if exact and grid.accumulator_scale else None
            handles.append(modules[name].register_forward_hook(_unit_hook(grid, rounding, then)))
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


def _snap_weights(model: nn.Module, names: list[str], weight_grids: dict[str, WeightGrid]) -> None:
    """Put each named weight exactly on its recorded grid (its float32 copy is off by up to half an ulp)."""
    state = dict(model.named_parameters())
    with torch.no_grad():
        for name in names:
            w = state[name]
            scale = torch.tensor(weight_grids[name].scale, dtype=w.dtype, device=w.device)
            scale = scale.reshape(-1, *([1] * (w.ndim - 1))) if scale.numel() > 1 else scale
            w.copy_(torch.round(w / scale) * scale)


@contextmanager
def uint8_activations(model: nn.Module, grids: dict[str, ActivationGrid] | None = None, *,
                      exact: bool | None = None, kernels: str = "default") -> Iterator[nn.Module]:
    """Within the block, ``model`` rounds every recorded activation to its uint8 grid (TF Lite fidelity).

    ``grids`` defaults to :func:`recorded_activation_grids` (``ValueError`` if the model has none).
    ``exact`` (default: whenever :func:`can_run_exact`): run in float64 with the weights on their
    recorded grids, so each conv's int32 accumulator is recovered exactly and requantized as the
    interpreter's ``kernels`` do (:meth:`ActivationGrid.requantize_accumulator`: ``"default"``
    XNNPACK, or TF Lite's ``"builtin"``/``"reference"`` kernels); otherwise each float output is
    rounded to its grid. Outputs keep the model's dtype. On exit (also after an exception) the
    hooks are removed and the model's dtype and weights restored.
    """
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
    grids = recorded_activation_grids(model) if grids is None else grids
    possible = can_run_exact(model, grids)
    if exact and not possible:
        raise ValueError(f"exact fidelity needs an accumulator scale for every recorded conv output and the "
                         f"weights' grids; {type(model).__name__} was imported without them (re-import the .tflite)")
    exact = possible if exact is None else exact
    saved: dict[str, torch.Tensor] = {}
    dtype = next(model.parameters()).dtype
    def restore() -> None:
        with torch.inference_mode(False):  # normal tensors again, even if entered under inference_mode
            model.to(dtype).load_state_dict(saved)

    if exact:
        with torch.inference_mode(False):
            saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
            modules = dict(model.named_modules())
            model.double()
            _snap_weights(model, [_weight_name(modules, n) for n in grids if not _special(n)], _weight_grids(model))
    try:
        handles = add_activation_hooks(model, grids, exact=exact, kernels=kernels)
        if exact:
            handles.append(model.register_forward_hook(_cast_output_hook(dtype)))
    except BaseException:
        if saved:
            restore()
        raise
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
        if saved:
            restore()
