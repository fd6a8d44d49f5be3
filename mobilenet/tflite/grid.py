"""TF Lite's uint8 activation grids and the integer arithmetic its interpreter does on them.

A quantized ``.tflite`` tensor holds integers ``q`` in ``[quant_min, quant_max]`` standing for the real
values ``(q - zero_point) * scale`` (:class:`ActivationGrid`). This module is that grid, the interpreter's
rounding rules on it (requantizing an int32 accumulator as each kernel set does, the CONCATENATION and
uint8 LOGISTIC tables) and the readers that take a grid off a parsed file's tensors
(:func:`tensor_grid`, :func:`conv_output_grid`, :func:`weight_grid`). It needs torch and numpy only, so
the weights record (:mod:`mobilenet.weights`) can carry grids and :mod:`mobilenet.tflite.fidelity` can
put them back on a model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from .format import TFLiteModel, TFLiteOperator, TFLiteTensor

_QUANT_MIN, _QUANT_MAX = 0, 255
# The interpreter's kernel sets: "default" = the XNNPACK delegate, "builtin" = TF Lite's optimized
# kernels, "reference" = its reference kernels; each requantizes in its own way.
KERNELS = ("default", "builtin", "reference")
_QRANGE = {"uint8": (0, 255), "int8": (-128, 127)}


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


# ---- reading grids off a parsed file ------------------------------------------------------------
def float_range(t: TFLiteTensor) -> list[float] | None:
    """[min, max] of the float values a per-tensor uint8/int8 activation can take (None: not quantized)."""
    if not t.is_quantized or t.scale.size != 1 or t.dtype not in _QRANGE:
        return None
    qmin, qmax = _QRANGE[t.dtype]
    scale, zp = float(t.scale[0]), int(t.zero_point[0])
    return [(qmin - zp) * scale, (qmax - zp) * scale]


def tensor_grid(t: TFLiteTensor, activation: str | None = None) -> ActivationGrid | None:
    """The grid of a per-tensor uint8/int8 activation, narrowed by a fused ``activation`` (None: not quantized)."""
    if float_range(t) is None:
        return None
    return ActivationGrid.from_tflite(float(t.scale[0]), int(t.zero_point[0]), dtype=t.dtype, activation=activation)


def weight_grid(model: TFLiteModel, index: int) -> dict[str, Any] | None:
    """The quantization grid of a stored kernel (looking through DEQUANTIZE), for our (O, ...) layout.

    TF Lite quantizes conv kernels along the output channel (OHWI dim 0), depthwise kernels along
    the channel (1HWC dim 3) and fully-connected ones along dim 0: all our axis 0 after the transpose.
    """
    t = model.stored(index)
    if not t.is_quantized or t.dtype not in _QRANGE:
        return None
    qmin, qmax = _QRANGE[t.dtype]
    return {"scale": [float(v) for v in t.scale], "zero_point": [int(v) for v in t.zero_point],
            "quant_min": qmin, "quant_max": qmax, "axis": 0}


def conv_output_grid(model: TFLiteModel, op: TFLiteOperator) -> ActivationGrid | None:
    """The uint8 grid of a conv/fully-connected op's output, with its fused activation's clamp and the
    accumulator scale (input scale x kernel scale, per output channel if the kernel is) the
    interpreter requantizes from. None when the output is not quantized."""
    out, inp = model.tensors[op.outputs[0]], model.tensors[op.inputs[0]]
    if float_range(out) is None:
        return None
    kernel = model.stored(op.inputs[1])
    acc: tuple[float, ...] = ()
    if float_range(inp) is not None and kernel.is_quantized:
        acc = tuple(float(np.float64(inp.scale[0]) * np.float64(s)) for s in kernel.scale)
    return ActivationGrid.from_tflite(float(out.scale[0]), int(out.zero_point[0]), dtype=out.dtype,
                                      activation=op.options.get("fused_activation_function"), accumulator_scale=acc)
