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

The importers record the grids in the weights' ``extra`` metadata, so they survive save/load:

* ``activation_grids``: name -> ``{"scale", "zero_point", "quant_min", "quant_max",
  "accumulator_scale"}``, exactly as in the file (:class:`ActivationGrid`). Names are our module
  names (a forward hook rounds the module's output: ``stem``, ``blocks.3.pw``, ``classifier``;
  ``backbone.blocks.0.dw``, ``extras.1.conv``, ``box_heads.2``, ``cls_heads.5`` in the SSD) or one
  of the special points:

  ========================  =====================================================================
  ``input``                 the model's input (a pre-hook on the model)
  ``pool``                  the classifier's input: TF Lite's ``AVERAGE_POOL_2D`` output
  ``box_encodings``         the SSD's concatenated box offsets (B, A, 4): TF Lite's ``concat``
  ``class_logits``          the SSD's concatenated class logits (B, A, C+1): ``concat_1``; a
                            head's output is moved onto its concat's grid right in the head's hook
  ``class_scores``          the grid of the SSD's ``LOGISTIC`` output (scale 1/256); applied to the
                            logits as ``logit(rounded sigmoid)``, so the sigmoid in
                            post-processing gives the interpreter's scores
  ========================  =====================================================================

* ``activation_ranges`` (older imports, :func:`mobilenet.deploy.quantize.recorded_grids`): name ->
  [min, max]; a 256-level grid is derived from it (scale (max - min) / 255, zero point -min / scale).
* ``weight_quantization`` (state-dict name -> kernel grid): exact mode snaps the weights onto it.

Usage::

    with uint8_activations(model):
        logits = model(x)          # every recorded activation on its uint8 grid, as the interpreter computes
    tflite_parity(ssd, "detect.tflite", photos, fidelity=True)   # mobilenet.detection.parity
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
# The interpreter's kernel sets: "default" = the XNNPACK delegate, "builtin" = TF Lite's optimized
# kernels, "reference" = its reference kernels; each requantizes in its own way.
KERNELS = ("default", "builtin", "reference")


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest, ties away from zero: TF Lite's rounding (``std::round``, fixed-point requantize)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _quantize_multiplier(real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """TF Lite's ``QuantizeMultiplier``: real = q / 2^31 * 2^shift with q an int32 in [2^30, 2^31)."""
    mantissa, shift = torch.frexp(real.double())
    q = _round_half_away(mantissa * 2.0 ** 31).long()
    carry = q == 2 ** 31
    return torch.where(carry, q // 2, q), torch.where(carry, shift + 1, shift).long()


def _fixed_point_multiply(acc: torch.Tensor, real: torch.Tensor, *, ties_up: bool) -> torch.Tensor:
    """``MultiplyByQuantizedMultiplier`` on int64 ``acc``: TF Lite's own (non-XNNPACK) requantization.

    A rounding doubling high multiply by q (in units of 2^-31), then a rounding right shift: two
    roundings. The reference kernels (gemmlowp) break ties away from zero; the optimized builtin
    kernels break them upwards (they differ on negative outputs, e.g. the SSD heads'). Measured
    bit-exact against each.
    """
    q, shift = _quantize_multiplier(real)
    ab = acc * (1 << shift.clamp(min=0)) * q
    right = (-shift).clamp(min=0)
    if ties_up:
        high = (ab + (1 << 30)) >> 31
        return (high + ((1 << right) >> 1)) >> right
    nudge = torch.where(ab >= 0, torch.full_like(ab, 1 << 30), torch.full_like(ab, 1 - (1 << 30)))
    high = torch.div(ab + nudge, 1 << 31, rounding_mode="trunc")
    mask = (1 << right) - 1
    threshold = (mask >> 1) + (high < 0).long()
    return (high >> right) + ((high & mask) > threshold).long()


@dataclass(frozen=True)
class ActivationGrid:
    """A uint8 activation grid: ``real = (q - zero_point) * scale`` for integer ``q`` in [quant_min, quant_max]."""

    scale: float
    zero_point: int
    quant_min: int = _QUANT_MIN
    quant_max: int = _QUANT_MAX
    # conv outputs: the real value of one unit of the int32 accumulator (input scale x weight scale;
    # one value, or one per output channel); () when not recorded
    accumulator_scale: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ValueError(f"activation grid scale must be > 0, got {self.scale!r}")
        if not self.quant_min <= self.quant_max:
            raise ValueError(f"activation grid quant_min {self.quant_min} > quant_max {self.quant_max}")
        object.__setattr__(self, "accumulator_scale", tuple(float(v) for v in self.accumulator_scale))
        if any(not v > 0 for v in self.accumulator_scale):
            raise ValueError(f"accumulator_scale must be > 0, got {self.accumulator_scale!r}")

    @classmethod
    def from_range(cls, lo: float, hi: float) -> ActivationGrid:
        """The 256-level grid whose ends are ``lo`` and ``hi`` (for ranges recorded without scale/zero point)."""
        scale = (hi - lo) / (_QUANT_MAX - _QUANT_MIN)
        zero_point = int(min(max(round(_QUANT_MIN - lo / scale), _QUANT_MIN), _QUANT_MAX))
        return cls(scale=scale, zero_point=zero_point)

    @classmethod
    def from_tflite(cls, scale: float, zero_point: int, *, dtype: str = "uint8", activation: str | None = None,
                    accumulator_scale: tuple[float, ...] = ()) -> ActivationGrid:
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
        return cls(scale=float(scale), zero_point=zp, quant_min=qmin, quant_max=qmax,
                   accumulator_scale=accumulator_scale)

    @property
    def range(self) -> tuple[float, float]:
        """[min, max] real values on the grid."""
        return ((self.quant_min - self.zero_point) * self.scale, (self.quant_max - self.zero_point) * self.scale)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["accumulator_scale"] = list(self.accumulator_scale)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ActivationGrid:
        return cls(scale=float(d["scale"]), zero_point=int(d["zero_point"]),
                   quant_min=int(d.get("quant_min", _QUANT_MIN)), quant_max=int(d.get("quant_max", _QUANT_MAX)),
                   accumulator_scale=tuple(d.get("accumulator_scale") or ()))

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Real values -> the integers ``q`` (as floats of ``x``'s dtype), rounded and clamped."""
        return (_round_half_away(x / self.scale) + self.zero_point).clamp(self.quant_min, self.quant_max)

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Round ``x`` to the nearest grid value (clamped to the grid's range); same shape and dtype."""
        return (self.quantize(x) - self.zero_point) * self.scale

    def requantize_accumulator(self, y: torch.Tensor, kernels: str = "default") -> torch.Tensor:
        """A conv output ``y`` (B, C, H, W), computed exactly (float64), rounded as the interpreter does.

        ``y / accumulator_scale`` recovers the int32 accumulator (exact in float64 when the weights
        sit on their grid); multiplier = accumulator scale / output scale. ``kernels="default"``
        (XNNPACK, what ``Interpreter()`` runs): ``q = rint(float32(acc) * float32(multiplier))``,
        ties to even; ``"builtin"``/``"reference"`` (TF Lite's own kernels): a fixed-point multiply
        with two roundings (:func:`_fixed_point_multiply`). Then ``+ zero_point``, clamped to
        [quant_min, quant_max]. Each measured bit-exact against that kernel set's uint8 tensors.
        """
        if not self.accumulator_scale:
            raise ValueError("this grid has no accumulator_scale: the exact requantization needs one")
        if kernels not in KERNELS:
            raise ValueError(f"kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
        acc_scale = torch.tensor(self.accumulator_scale, dtype=torch.float64, device=y.device)
        view = (1, -1, 1, 1) if acc_scale.numel() > 1 else ()
        acc = torch.round(y.double() / acc_scale.reshape(view))
        real = (acc_scale / self.scale).reshape(view)
        if kernels == "default":
            q = torch.round(acc.float() * real.float()).double()  # float32 product, as XNNPACK
        else:  # TF Lite multiplies the two float32 scales in float32 before dividing in double
            real = acc_scale.float().double().reshape(view) / self.scale
            q = _fixed_point_multiply(acc.long(), real, ties_up=kernels == "builtin").double()
        q = (q + self.zero_point).clamp(self.quant_min, self.quant_max)
        return ((q - self.zero_point) * self.scale).to(y.dtype)

    def integers(self, x: torch.Tensor) -> torch.Tensor:
        """The integers ``q`` (int64) of values already on this grid."""
        return torch.round(x.double() / self.scale).long() + self.zero_point


def requantize_table(src: ActivationGrid, dst: ActivationGrid) -> torch.Tensor:
    """(256,) float64 real values: each uint8 of ``src`` moved onto ``dst`` as TF Lite's CONCATENATION does.

    ``round(q * s + b) + zero_point`` in float32 with s = src scale / dst scale, b = -src zero point * s
    (ties away from zero); an input on the output's grid is copied.
    """
    q = torch.arange(_QUANT_MIN, _QUANT_MAX + 1, dtype=torch.float32)
    if src.scale == dst.scale and src.zero_point == dst.zero_point:
        out = q
    else:
        s = torch.tensor(src.scale, dtype=torch.float32) * (1 / torch.tensor(dst.scale, dtype=torch.float32))
        out = (_round_half_away(q * s + (-src.zero_point) * s) + dst.zero_point).clamp(_QUANT_MIN, _QUANT_MAX)
    return (out.double() - dst.zero_point) * dst.scale


def logistic_table(src: ActivationGrid, dst: ActivationGrid) -> torch.Tensor:
    """(256,) float64 probabilities: TF Lite's uint8 LOGISTIC table (float32 sigmoid, rounded to ``dst``)."""
    q = torch.arange(_QUANT_MIN, _QUANT_MAX + 1, dtype=torch.float32)
    x = torch.tensor(src.scale, dtype=torch.float32) * (q - src.zero_point)
    p = 1 / (1 + torch.exp(-x))
    out = (_round_half_away(p * (1 / torch.tensor(dst.scale, dtype=torch.float32))) + dst.zero_point)
    return (out.clamp(dst.quant_min, dst.quant_max).double() - dst.zero_point) * dst.scale


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
    return name in (INPUT, POOL, *SSD_OUTPUTS, SCORES)


def can_run_exact(model: nn.Module, grids: dict[str, ActivationGrid] | None = None) -> bool:
    """True if every recorded conv output has an accumulator scale and its weight a recorded grid."""
    from ..deploy.quantize import recorded_grids

    grids = recorded_activation_grids(model) if grids is None else grids
    weights = recorded_grids(model)[1]
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
            # SSD heads feed TF Lite's concatenations, which requantize each head onto their own grid
            concat = boxes if name.startswith("box_heads.") else logits if name.startswith("cls_heads.") else None
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


def _snap_weights(model: nn.Module, names: list[str], weight_grids: dict[str, dict[str, Any]]) -> None:
    """Put each named weight exactly on its recorded grid (its float32 copy is off by up to half an ulp)."""
    state = dict(model.named_parameters())
    with torch.no_grad():
        for name in names:
            w = state[name]
            scale = torch.tensor(weight_grids[name]["scale"], dtype=w.dtype, device=w.device)
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
    from ..deploy.quantize import recorded_grids

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
            _snap_weights(model, [_weight_name(modules, n) for n in grids if not _special(n)],
                          recorded_grids(model)[1])
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
