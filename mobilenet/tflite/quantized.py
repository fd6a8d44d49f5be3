"""Full-integer TF Lite classifiers: a MobileNetV1 written as Google's quantized ``.tflite`` files are, op for op.

The graph is the one Google's 2018 quantized MobileNet v1 files have: uint8 input (pixels) ``(1, H, W, C)``,
27 ``CONV_2D``/``DEPTHWISE_CONV_2D`` with int32 biases on the grid ``input_scale x kernel_scale`` and the ReLU6
fused, ``AVERAGE_POOL_2D``, a 1x1 ``CONV_2D`` classifier, ``RESHAPE`` and a ``SOFTMAX`` (scale 1/256) whose
uint8 output is the file's. Two schemes (:data:`SCHEMES`):

* ``per-tensor``: uint8 kernels (one scale and zero point per tensor) and uint8 activations, Google's 2018
  files; what an import of one of them is written back in;
* ``per-channel``: int8 kernels, symmetric per output channel (``|q| <= 127``), int8 activations: TF Lite's int8
  scheme (TF Lite's uint8 kernels take only per-tensor weights). The same uint8 interface: a ``QUANTIZE`` from the
  uint8 pixels to their int8 grid (zero point - 128: the same real values) first, one from the int8 probabilities
  to uint8 last, so the file's interface is the per-tensor one's. The calibrated default: one kernel grid per
  tensor is too coarse for the channels of a depthwise conv with BN folded in (tests/test_export_int8.py and
  benchmarks/deploy_parity.py measure both on a model without recorded grids).

Where the grids come from (:func:`classifier_grids`):

* **recorded**: a quantization-aware trained import (Google's ``*_quant.tflite``) carries the grid of every
  activation and kernel (:class:`mobilenet.weights.Quantization`); the kernels and biases are put back on them
  exactly, so exporting the import again gives back a file whose uint8 outputs equal the original's;
* **calibrated**: otherwise, each activation's range is observed on calibration images (min/max: ReLU outputs
  from 0, a ReLU6 output capped at 6, the logits over their range), each folded kernel gets the min/max grid of
  its scheme, and each bias absorbs the mean output shift of its kernel's rounding, measured on the same images
  (bias correction, as :func:`mobilenet.deploy.quantize.bias_corrected`).

The input takes pixels on a grid of scale 1 / std around the pixel nearest the mean: a normalisation that one
grid cannot express exactly (ImageNet's per-channel mean and std, a mean of 127.5) is folded into the stem's
kernel and bias (exact except where the stem pads its border: there the pixel nearest the mean, where the float
model pads a normalised 0). :func:`simulation` is our own int8 simulation of a written file: run inside
:func:`mobilenet.tflite.fidelity.uint8_activations`, it computes the file's integer arithmetic (XNNPACK's, the
interpreter's default) bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from ..model import MobileNetV1, SamePad2d
from ..preprocessing import Preprocessing
from ..weights import Quantization, WeightGrid, weights_info
from .grid import ActivationGrid
from .writer import GraphWriter

SOFTMAX_GRID = ActivationGrid(scale=1 / 256, zero_point=0)  # TF Lite's fixed grid of a uint8 softmax output


@dataclass(frozen=True)
class Unit:
    """One conv-bn-act unit, BN folded: kernel OIHW and bias (float64), how it pads, its activation."""

    name: str
    weight: torch.Tensor
    bias: torch.Tensor
    stride: int
    depthwise: bool
    same: bool  # TF's SAME padding (the tf preset, and every stride-1 conv); else an explicit PAD first
    padding: int
    activation: str  # RELU6, RELU or NONE


def unit(name: str, module: nn.Module) -> Unit:
    """A ``conv_bn_act`` Sequential (BN folded) or a plain ``nn.Conv2d`` (a detector's head) as a :class:`Unit`."""
    from ..deploy.fold import fold_conv_bn

    conv = module if isinstance(module, nn.Conv2d) else module.conv
    bn, act = getattr(module, "bn", None), getattr(module, "act", None)
    folded = fold_conv_bn(conv, bn) if isinstance(bn, nn.BatchNorm2d) else conv
    if not isinstance(act, (nn.ReLU6, nn.ReLU, nn.Identity, type(None))):
        raise ValueError(f"{name}: activation {type(act).__name__} has no TF Lite fused equivalent")
    activation = "RELU6" if isinstance(act, nn.ReLU6) else "RELU" if isinstance(act, nn.ReLU) else "NONE"
    bias = folded.bias if folded.bias is not None else torch.zeros(conv.out_channels)
    k = conv.kernel_size[0]
    same = isinstance(getattr(module, "pad", None), SamePad2d) or conv.stride[0] == 1 and conv.padding[0] == k // 2
    return Unit(name, folded.weight.detach().double(), bias.detach().double(), conv.stride[0], conv.groups > 1,
                same, int(conv.padding[0]), activation)


def _is_unit(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and isinstance(getattr(module, "conv", None), nn.Conv2d)


def units(model: MobileNetV1) -> tuple[list[Unit], Unit]:
    """The 27 body units and the classifier (as a 1x1 conv unit) of ``model``, BN folded (float64)."""
    found = [unit(name, m) for name, m in model.named_modules() if _is_unit(m)]
    head = model.classifier
    if isinstance(head, nn.Linear):
        w = head.weight.detach().double()[:, :, None, None]
    elif isinstance(head, nn.Conv2d) and head.kernel_size == (1, 1):
        w = head.weight.detach().double()
    else:
        raise ValueError(f"the classifier is a {type(head).__name__}: a full-integer export needs a linear or 1x1 "
                         "conv classifier (a model with num_classes=0 has none)")
    b = head.bias.detach().double() if head.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    return found, Unit("classifier", w, b, 1, False, True, 0, "NONE")


SCHEMES = ("per-channel", "per-tensor")  # int8 per-channel kernels, int8 activations; or Google's 2018 uint8 files


def _input_map(pre: Preprocessing) -> tuple[ActivationGrid, torch.Tensor, torch.Tensor]:
    """(input grid, per-channel ``a``, ``c``) with the normalised input ``a * r + c``, where ``r`` is the real value
    the file's input grid gives a pixel. The grid has scale 1 / std (the mean std; float32) and zero point the
    whole pixel value nearest the mean: where one uint8 grid holds the normalisation (the same integer mean and std
    for every channel), a = 1 and c = 0; otherwise the rest (per-channel stds and means, a mean's fraction: 127.5)
    is folded into the stem (:func:`_fold_normalisation`), exact except where the stem pads its border, which reads
    ``r = 0``, the pixel nearest the mean (a normalised ``c``), where the float model reads a normalised 0."""
    mean, std = torch.tensor(pre.mean, dtype=torch.float64), torch.tensor(pre.std, dtype=torch.float64)
    zero = int(min(max(round(float(mean.mean())), 0), 255))
    scale = float(np.float32(1 / float(std.mean())))
    return ActivationGrid(scale=scale, zero_point=zero), 1 / (scale * std), (zero - mean) / std


def _folds(a: torch.Tensor, c: torch.Tensor) -> bool:
    """Whether the stem must absorb ``a * r + c`` (a float32 grid scale alone is within 1e-7 of ``a = 1``)."""
    return bool((a - 1).abs().max() > 1e-6 or c.abs().max() > 1e-9)


@dataclass
class Grids:
    """Every grid the export writes: activations by unit name (``input``, units, ``pool``, ``classifier``),
    kernels by unit name, the scheme, and what the file holds in place of the model's own numbers: the stem's
    input map ``(a, c)`` when the pixels' normalisation is folded into it (:func:`_input_map`), and each unit's
    bias after bias correction (float64, by unit name; a unit not named keeps its folded bias)."""

    activations: dict[str, ActivationGrid]
    weights: dict[str, WeightGrid]
    source: str  # "recorded" or "calibrated"
    scheme: str = "per-tensor"  # one of SCHEMES
    input_map: tuple[torch.Tensor, torch.Tensor] | None = None
    biases: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def fold_input(self) -> bool:
        return self.input_map is not None

    @property
    def int8(self) -> bool:
        """Activations stored as int8 (the per-channel scheme; TF Lite's uint8 kernels take per-tensor weights)."""
        return self.scheme == "per-channel"


BIAS_LIMIT = 2.0 ** 30  # |int32 bias| kept below this: room for bias correction's shift


def _weight_grid(w: torch.Tensor, scheme: str = "per-tensor", *, bias: torch.Tensor | None = None,
                 input_scale: float | None = None) -> WeightGrid:
    """A kernel's grid: per output channel symmetric int8 (``|q| <= 127``, zero point 0, TF Lite's int8 scheme) or
    per tensor uint8 over [min(w, 0), max(w, 0)]; scales rounded to the float32 the file stores. Per channel, a
    scale is raised where the channel's ``bias`` would not fit the int32 grid ``input_scale x scale`` (a channel of
    (near) zero weights with a bias: its scale would be tiny)."""
    if scheme == "per-channel":
        from ..deploy.quantize import symmetric_scales

        scales = symmetric_scales(w, min_scale=2**-24).double()
        if bias is not None and input_scale is not None:
            scales = torch.maximum(scales, bias.abs().double() / (np.float32(input_scale) * BIAS_LIMIT))
        scales = scales.float().tolist()  # float32 values
        return WeightGrid(scale=tuple(scales), zero_point=(0,) * len(scales), quant_min=-127, quant_max=127)
    lo, hi = min(float(w.min()), 0.0), max(float(w.max()), 0.0)
    scale = float(np.float32((hi - lo) / 255 or 1.0))
    return WeightGrid(scale=(scale,), zero_point=(int(round(-lo / scale)),), quant_min=0, quant_max=255)


def _recorded_scheme(weights: dict[str, WeightGrid]) -> str:
    """The scheme of an imported file, read off its kernels' grids (int8 kernels: the int8 scheme)."""
    return "per-channel" if any(g.quant_min < 0 for g in weights.values()) else "per-tensor"


def _weight_integers(w: torch.Tensor, grid: WeightGrid) -> torch.Tensor:
    """``w`` (O, ...) on ``grid`` (one scale, or one per output channel): the stored integers (float64)."""
    shape = (-1,) + (1,) * (w.ndim - 1)
    scale = torch.tensor(grid.scale, dtype=torch.float64).view(shape)
    zero = torch.tensor(grid.zero_point, dtype=torch.float64).view(shape)
    return (torch.round(w.double() / scale) + zero).clamp(grid.quant_min, grid.quant_max)


def _dequantized(w: torch.Tensor, grid: WeightGrid) -> torch.Tensor:
    shape = (-1,) + (1,) * (w.ndim - 1)
    scale = torch.tensor(grid.scale, dtype=torch.float64).view(shape)
    zero = torch.tensor(grid.zero_point, dtype=torch.float64).view(shape)
    return (_weight_integers(w, grid) - zero) * scale


def _float32_grid(lo: float, hi: float) -> ActivationGrid:
    g = ActivationGrid.from_range(lo, hi)
    return replace(g, scale=float(np.float32(g.scale)))  # the file's float32 scale, so the simulation is exact


class _Observer:
    """Forward hooks on the float model's units: each output's [min, max] and each input's per-channel mean."""

    def __init__(self, modules: dict[str, nn.Module], names: list[str]) -> None:
        self.ranges: dict[str, list[float]] = {}
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.handles = []
        for n in names:
            self.handles.append(modules[n].register_forward_pre_hook(self._input(n)))
            self.handles.append(modules[n].register_forward_hook(self._output(n)))

    def _input(self, n: str) -> Any:
        def hook(_m: nn.Module, args: Any) -> None:
            x = args[0].double()
            self.sums[n] = self.sums.get(n, 0) + x.sum(dim=[d for d in range(x.ndim) if d != 1])
            self.counts[n] = self.counts.get(n, 0) + x.numel() // x.shape[1]
        return hook

    def _output(self, n: str) -> Any:
        def hook(_m: nn.Module, _i: Any, o: torch.Tensor) -> None:
            lo, hi = self.ranges.get(n, [0.0, 0.0])
            self.ranges[n] = [min(lo, float(o.min())), max(hi, float(o.max()))]
        return hook

    def mean(self, n: str) -> torch.Tensor:
        return self.sums[n] / self.counts[n]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _bias_corrected(u: Unit, grid: WeightGrid, mean: torch.Tensor) -> torch.Tensor:
    """``u``'s bias less the mean output shift that rounding its kernel onto ``grid`` gives for inputs of
    per-channel mean ``mean`` (bias correction, :func:`mobilenet.deploy.quantize.bias_corrected`)."""
    from ..deploy.quantize import rounding_shift

    error = _dequantized(u.weight, grid) - u.weight
    return u.bias - rounding_shift(error, mean.double(), u.weight.shape[0] if u.depthwise else 1)


@torch.no_grad()
def classifier_grids(model: MobileNetV1, calibration: torch.Tensor | None = None, *, use_recorded: bool = True,
                     scheme: str = "per-channel", bias_correction: bool = True) -> Grids:
    """The grids of a full-integer export of ``model`` (module docstring): the recorded ones of a quantized
    import (``use_recorded``), else calibrated on ``calibration`` ``(N, C, H, W)`` normalised images in ``scheme``
    (``"per-channel"``: int8 symmetric kernels per output channel and int8 activations; ``"per-tensor"``: uint8
    kernels and activations as Google's 2018 files), the biases corrected for the kernels' rounding
    (``bias_correction``)."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    body, head = units(model)
    names = [u.name for u in body] + ["classifier"]
    q = weights_info(model).quantization
    if use_recorded and q is not None and all(n in q.activations for n in ["input", *names]) \
            and all(f"{n}.conv.weight" in q.weights or n == "classifier" for n in names[:-1]) \
            and "classifier.weight" in q.weights:
        acts = dict(q.activations)
        acts.setdefault("pool", acts[body[-1].name])
        weights = {n: q.weights[f"{n}.conv.weight" if n != "classifier" else "classifier.weight"] for n in names}
        return Grids(acts, weights, "recorded", _recorded_scheme(weights))
    if calibration is None:
        raise ValueError("this model carries no recorded quantization grids: give calibration images")
    from ..predict import model_preprocessing

    input_grid, a, c = _input_map(model_preprocessing(model))
    observer = _Observer(dict(model.named_modules()), names)
    try:
        logits = torch.cat([model.eval()(b) for b in calibration.split(32)])
    finally:
        observer.remove()
    acts = {"input": input_grid}
    for u in body:  # ReLU6 outputs from 0 to at most 6, ReLU outputs from 0
        hi = observer.ranges[u.name][1]
        acts[u.name] = _float32_grid(0.0, (min(hi, 6.0) if u.activation == "RELU6" else hi) or 1.0)
    acts["pool"] = acts[body[-1].name]
    acts["classifier"] = _float32_grid(min(float(logits.min()), 0.0), max(float(logits.max()), 0.0))
    fold = _folds(a, c)
    means = {n: observer.mean(n) for n in names}
    if fold:  # the stem computes on r = (normalised - c) / a
        body[0] = _fold_normalisation(body[0], a, c)
        means[body[0].name] = (means[body[0].name] - c) / a
    inputs = dict(zip(names, ["input", *names[:-2], "pool"], strict=True))  # each unit reads the one before
    weights = {u.name: _weight_grid(u.weight, scheme, bias=u.bias, input_scale=acts[inputs[u.name]].scale)
               for u in [*body, head]}
    biases = {u.name: _bias_corrected(u, weights[u.name], means[u.name]) for u in [*body, head]} \
        if bias_correction else {}
    return Grids(acts, weights, "calibrated", scheme, (a, c) if fold else None, biases)


def _written_units(model: MobileNetV1, grids: Grids) -> tuple[list[Unit], Unit]:
    """The units as the file holds them: the stem on the file's input (normalisation folded), corrected biases."""
    body, head = units(model)
    if grids.input_map is not None:
        body[0] = _fold_normalisation(body[0], *grids.input_map)
    body = [replace(u, bias=grids.biases[u.name]) if u.name in grids.biases else u for u in body]
    if head.name in grids.biases:
        head = replace(head, bias=grids.biases[head.name])
    return body, head


def _accumulator_scales(source: ActivationGrid, weights: WeightGrid) -> tuple[float, ...]:
    """The real value of one unit of a conv's int32 accumulator, per weight scale: float32 products, as the file's
    bias scales (and the interpreter's requantization) take them."""
    return tuple(float(np.float32(source.scale) * np.float32(s)) for s in weights.scale)


def as_recorded(model: MobileNetV1, grids: Grids) -> Quantization:
    """``grids`` as the record a quantized import carries (:class:`mobilenet.weights.Quantization`, with each conv
    output's accumulator scale), so that :func:`mobilenet.tflite.fidelity.uint8_activations` on the model
    :func:`simulation` gives computes what the written file computes: our own int8 simulation of it."""
    body, head = units(model)
    acts = {k: grids.activations[k] for k in ("input", "pool")}
    previous = grids.activations["input"]
    for u in [*body, head]:
        source = grids.activations["pool"] if u.name == "classifier" else previous
        g = grids.activations[u.name]
        acts[u.name] = replace(g, accumulator_scale=_accumulator_scales(source, grids.weights[u.name]))
        previous = g
    weights = {(f"{n}.conv.weight" if n != "classifier" else "classifier.weight"): w for n, w in grids.weights.items()}
    return Quantization(activations=acts, weights=weights)


class _InputMap(nn.Module):
    """The normalised image -> the file's input reals ``(x - c) / a`` (per channel)."""

    def __init__(self, a: torch.Tensor, c: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("a", a.float().view(1, -1, 1, 1))
        self.register_buffer("c", c.float().view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.c.to(x.dtype)) / self.a.to(x.dtype)


@torch.no_grad()
def simulation(model: MobileNetV1, grids: Grids) -> MobileNetV1:
    """A BN-folded copy of ``model`` holding what the file written on ``grids`` holds (the stem on the file's input
    when the normalisation is folded, the corrected biases, a linear classifier as the file's 1x1 conv) and
    carrying ``grids`` as its recorded quantization (:func:`as_recorded`). It takes normalised images as ``model``
    does; inside :func:`mobilenet.tflite.fidelity.uint8_activations` it computes what the file computes in the
    interpreter (exact mode: its integer arithmetic), which makes it our own simulation of the file."""
    from ..deploy.fold import fold_bn
    from ..weights import WeightsInfo

    sim = fold_bn(model)
    body, head = _written_units(model, grids)
    record = as_recorded(model, grids)
    modules = dict(sim.named_modules())
    classifier = nn.Conv2d(head.weight.shape[1], head.weight.shape[0], 1)
    for u in [*body, head]:
        conv = classifier if u is head else modules[u.name].conv
        conv.weight.copy_(u.weight.to(conv.weight.dtype))
        if conv.bias is None:
            conv.bias = nn.Parameter(torch.zeros(conv.out_channels))
        # the file's int32 bias, as a multiple of the accumulator's unit: a float32 copy of the float64 bias would
        # put some channels' accumulators one unit off
        unit = torch.tensor(record.activations[u.name].accumulator_scale, dtype=torch.float64)
        conv.bias.copy_((torch.round(u.bias / unit) * unit).to(conv.bias.dtype))
    sim.classifier = classifier
    if grids.input_map is not None:  # the stem reads r = (x - c) / a, the input grid rounds r to pixels
        sim.input_map = _InputMap(*grids.input_map)
        sim.register_forward_pre_hook(lambda m, args: (m.input_map(args[0]), *args[1:]))
    if grids.int8:  # the int8 AVERAGE_POOL_2D rounds its stored integers' mean half away from zero
        pool = grids.activations["pool"]
        classifier.register_forward_pre_hook(lambda m, args: (_int8_mean(args[0], pool), *args[1:]))
    sim.weights_info = WeightsInfo(quantization=record)
    return sim.eval()


def _int8_mean(x: torch.Tensor, grid: ActivationGrid) -> torch.Tensor:
    """The average pool's output ``x`` (the mean of values on ``grid``) rounded as TF Lite's int8 kernel rounds:
    ``(sum +- count / 2) / count`` on the int8 integers (q - 128), i.e. half away from zero there (uint8's rounds
    half up, which differs where the int8 mean is negative)."""
    q = x.double() / grid.scale + grid.zero_point - 128
    rounded = torch.sign(q) * torch.floor(q.abs() + 0.5) + 128
    return ((rounded.clamp(grid.quant_min, grid.quant_max) - grid.zero_point) * grid.scale).to(x.dtype)


def _fold_normalisation(stem: Unit, a: torch.Tensor, c: torch.Tensor) -> Unit:
    """The stem computing on ``r`` what it computed on ``a * r + c`` (per input channel)."""
    w = stem.weight * a.view(1, -1, 1, 1)
    b = stem.bias + (stem.weight * c.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
    return replace(stem, weight=w, bias=b)


def _dtype(grids: Grids) -> str:
    return "int8" if grids.int8 else "uint8"


def _grid_kwargs(g: ActivationGrid, int8: bool = False) -> dict[str, Any]:
    """A tensor's quantization: an int8 tensor stores the same grid with zero point - 128."""
    return {"scale": np.float32(g.scale), "zero_point": g.zero_point - (128 if int8 else 0)}


# builtin operator versions of the int8 graph (TF Lite's op_version.cc: the version an int8 input needs)
_INT8_VERSIONS = {"CONV_2D": 3, "DEPTHWISE_CONV_2D": 3, "AVERAGE_POOL_2D": 2, "SOFTMAX": 2, "PAD": 2,
                  "CONCATENATION": 2, "LOGISTIC": 2}


def _version(opcode: str, int8: bool) -> int:
    return _INT8_VERSIONS.get(opcode, 1) if int8 else 1


@torch.no_grad()
def classifier_flatbuffer(model: MobileNetV1, grids: Grids, *, metadata: dict[str, bytes] | None = None) -> bytes:
    """The ``.tflite`` bytes of ``model`` on ``grids`` (see the module docstring)."""
    body, head = _written_units(model, grids)
    cfg = model.config
    r = cfg.resolution
    shapes = _shapes(model, r)
    g = GraphWriter()
    acts, int8, dtype = grids.activations, grids.int8, _dtype(grids)
    x = g.tensor("input", (1, r, r, cfg.in_chans), "uint8", **_grid_kwargs(acts["input"]))
    current, current_grid = x, acts["input"]
    if int8:  # uint8 pixels in, as Google's files: the same grid in int8 (q - 128)
        current = g.tensor("input/int8", (1, r, r, cfg.in_chans), "int8", **_grid_kwargs(acts["input"], True))
        g.operator("QUANTIZE", [x], [current])
    for u in [*body, head]:
        if u.name == "classifier":  # the average pool first: the last map averaged, on the pool's grid
            last = shapes[body[-1].name]
            pooled = g.tensor("pool", (1, 1, 1, last[3]), dtype, **_grid_kwargs(acts["pool"], int8))
            g.operator("AVERAGE_POOL_2D", [current], [pooled], padding="VALID", strides=(2, 2),
                       filter=(last[1], last[2]), version=_version("AVERAGE_POOL_2D", int8))
            current, current_grid = pooled, acts["pool"]
        out_shape = (1, 1, 1, head.weight.shape[0]) if u.name == "classifier" else shapes[u.name]
        y = _conv(g, u, current, current_grid, acts[u.name], grids.weights[u.name], out_shape,
                  shapes.get(f"{u.name}:in"), _activation(u, acts[u.name], grids.source), int8)
        current, current_grid = y, acts[u.name]
    n = head.weight.shape[0]
    shape = g.constant("logits/shape", np.array([1, n], dtype=np.int32))
    logits = g.tensor("logits", (1, n), dtype, **_grid_kwargs(acts["classifier"], int8))
    g.operator("RESHAPE", [current, shape], [logits], new_shape=(1, n))
    probs = g.tensor("probabilities" + ("/int8" if int8 else ""), (1, n), dtype, **_grid_kwargs(SOFTMAX_GRID, int8))
    g.operator("SOFTMAX", [logits], [probs], beta=1.0, version=_version("SOFTMAX", int8))
    if int8:  # uint8 probabilities out: the same 1/256 grid
        out = g.tensor("probabilities", (1, n), "uint8", **_grid_kwargs(SOFTMAX_GRID))
        g.operator("QUANTIZE", [probs], [out])
        probs = out
    return g.finish([x], [probs], metadata=metadata)


def _activation(u: Unit, grid: ActivationGrid, source: str) -> str:
    """The fused activation to write. On a recorded grid, the one that reproduces its clamp exactly: the model's
    when the grid was narrowed by it, else NONE (the clamp to 0..255 is then the whole story: Google's SSD file
    fuses no ReLU6 into its backbone, its grids start at 0 instead)."""
    if source != "recorded" or u.activation == "NONE":
        return u.activation
    narrowed = grid.quant_min > 0 or grid.quant_max < 255
    return u.activation if narrowed else "NONE"


def _conv(g: GraphWriter, u: Unit, x: int, x_grid: ActivationGrid, out_grid: ActivationGrid, wgrid: WeightGrid,
          out_shape: tuple[int, ...], in_shape: tuple[int, ...] | None, activation: str, int8: bool = False) -> int:
    """Write one conv unit reading tensor ``x`` (on ``x_grid``): an explicit PAD first where it pads
    symmetrically, the kernel on ``wgrid`` (uint8 per tensor, or int8 per output channel), int32 bias on the
    accumulator's grid; activations int8 (``int8``) or uint8; returns its output tensor."""
    dtype = "int8" if int8 else "uint8"
    if not u.same:  # explicit symmetric padding (the paper preset at stride 2): PAD pads with the zero point
        _, h, wd, ch = in_shape  # type: ignore[misc]
        pads = g.constant(f"{u.name}/paddings",
                          np.array([[0, 0], [u.padding] * 2, [u.padding] * 2, [0, 0]], dtype=np.int32))
        padded = g.tensor(f"{u.name}/padded", (1, h + 2 * u.padding, wd + 2 * u.padding, ch), dtype,
                          **_grid_kwargs(x_grid, int8))
        g.operator("PAD", [x, pads], [padded], version=_version("PAD", int8))
        x = padded
    # integers in OIHW (per output channel: axis 0), then OHWI (conv) or 1HWC (depthwise: channels last,
    # multiplier 1, so its channel axis is 3)
    q = _weight_integers(u.weight, wgrid)
    kernel = (q.permute(1, 2, 3, 0) if u.depthwise else q.permute(0, 2, 3, 1)).contiguous()
    wtype = np.int8 if wgrid.quant_min < 0 else np.uint8
    per_channel = len(wgrid.scale) > 1
    wq = g.constant(f"{u.name}/weights", kernel.numpy().astype(wtype),
                    scale=np.float32(wgrid.scale) if per_channel else np.float32(wgrid.scale[0]),
                    zero_point=list(wgrid.zero_point) if per_channel else wgrid.zero_point[0],
                    axis=3 if per_channel and u.depthwise else 0)
    # the bias lives on the accumulator's grid: input scale x kernel scale, as float32 products
    bias_scale = np.float32(x_grid.scale) * np.float32(wgrid.scale)
    bq = torch.round(u.bias / torch.from_numpy(bias_scale.astype(np.float64))).clamp(-(2 ** 31), 2 ** 31 - 1)
    b = g.constant(f"{u.name}/bias", bq.numpy().astype(np.int32),
                   scale=bias_scale if per_channel else bias_scale[0], zero_point=0)
    y = g.tensor(u.name, out_shape, dtype, **_grid_kwargs(out_grid, int8))
    opcode = "DEPTHWISE_CONV_2D" if u.depthwise else "CONV_2D"
    g.operator(opcode, [x, wq, b], [y], padding="SAME" if u.same else "VALID", stride=u.stride,
               activation=activation, version=_version(opcode, int8))
    return y


def _preprocessing(model: MobileNetV1) -> Preprocessing:
    from ..predict import model_preprocessing

    return model_preprocessing(model)


def _shapes(model: MobileNetV1, r: int) -> dict[str, tuple[int, ...]]:
    """NHWC shape of every unit's input (``name:in``) and output at input size ``r``."""
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Sequential) and isinstance(getattr(module, "conv", None), nn.Conv2d):
            def hook(m: nn.Module, i: Any, o: torch.Tensor, n: str = name) -> None:
                shapes[f"{n}:in"] = tuple(i[0].permute(0, 2, 3, 1).shape)
                shapes[n] = tuple(o.permute(0, 2, 3, 1).shape)
            hooks.append(module.register_forward_hook(hook))
    try:
        model.eval()(torch.zeros(1, model.config.in_chans, r, r))
    finally:
        for h in hooks:
            h.remove()
    return shapes


# ---------------------------------------------------------------------------------------------------------------
# The SSD: Google's detect.tflite graph, ending in TFLite_Detection_PostProcess.
# ---------------------------------------------------------------------------------------------------------------
POSTPROCESS_OP = "TFLite_Detection_PostProcess"
TF_BOX_ORDER = (1, 0, 3, 2)  # TF's (t_y, t_x, t_h, t_w) from our (t_x, t_y, t_w, t_h): the same swap both ways


def ssd_units(model: nn.Module) -> tuple[list[Unit], list[str], list[Unit], list[Unit]]:
    """(backbone and extra units in order, the names of the six units feeding the heads, box heads, class
    heads) of an SSD (read by attribute: ``backbone``, ``extras``, ``box_heads``, ``cls_heads``)."""
    backbone = model.backbone
    body = [unit(f"backbone.{n}", m) for n, m in backbone.named_modules() if _is_unit(m)]
    wanted = sorted({int(f["module"].split(".")[1]) for f in backbone.feature_info})[-2:]
    feeds = [f"backbone.blocks.{i}.pw" for i in wanted]
    for k, block in enumerate(model.extras):
        parts = [(f"extras.{k}.{n}", m) for n, m in block.named_children() if _is_unit(m)]
        body += [unit(n, m) for n, m in parts]
        feeds.append(parts[-1][0])
    heads = []
    for kind in ("box_heads", "cls_heads"):
        found = []
        for i, head in enumerate(getattr(model, kind)):
            if not isinstance(head, nn.Conv2d):
                raise ValueError(f"{kind}.{i} is a {type(head).__name__}: a full-integer export takes conv heads "
                                 "(not the SSDLite ones)")
            u = unit(f"{kind}.{i}", head)
            if kind == "box_heads":  # per anchor, TF's order of the 4 box encodings
                a = u.weight.shape[0] // 4
                perm = torch.tensor([4 * j + t for j in range(a) for t in TF_BOX_ORDER])
                u = replace(u, weight=u.weight[perm], bias=u.bias[perm])
            found.append(u)
        heads.append(found)
    return body, feeds, heads[0], heads[1]


@torch.no_grad()
def ssd_grids(model: nn.Module, calibration: torch.Tensor | None = None, *, use_recorded: bool = True,
              scheme: str = "per-channel", bias_correction: bool = True) -> Grids:
    """The grids of a full-integer SSD: recorded (an imported ``detect.tflite``), else calibrated on images
    (``scheme`` and ``bias_correction`` as :func:`classifier_grids`)."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    from ..weights import BOX_ENCODINGS, CLASS_LOGITS, CLASS_SCORES

    body, feeds, boxes, classes = ssd_units(model)
    names = [u.name for u in body + boxes + classes]
    q = weights_info(model).quantization

    def weight_key(n: str) -> str:
        return f"{n}.weight" if n.split(".")[0] in ("box_heads", "cls_heads") else f"{n}.conv.weight"

    points = ["input", BOX_ENCODINGS, CLASS_LOGITS]
    if use_recorded and q is not None and all(n in q.activations for n in names + points) \
            and all(weight_key(n) in q.weights for n in names):
        acts = dict(q.activations)
        acts.setdefault(CLASS_SCORES, SOFTMAX_GRID)
        weights = {n: q.weights[weight_key(n)] for n in names}
        return Grids(acts, weights, "recorded", _recorded_scheme(weights))
    if calibration is None:
        raise ValueError("this detector carries no recorded quantization grids: give calibration images")
    cfg = model.config
    input_grid, a, c = _input_map(Preprocessing(resolution=cfg.image_size[0], mean=cfg.pixel_mean, std=cfg.pixel_std))
    observer = _Observer(dict(model.named_modules()), names)
    try:
        outs = [model.eval()(b) for b in calibration.split(16)]
    finally:
        observer.remove()
    box = torch.cat([o[0] for o in outs])
    logits = torch.cat([o[1] for o in outs])
    acts = {"input": input_grid}
    weighted = body + boxes + classes
    for u in weighted:
        lo, hi = observer.ranges[u.name]
        if u.activation in ("RELU", "RELU6"):
            lo, hi = 0.0, (min(hi, 6.0) if u.activation == "RELU6" else hi)
        acts[u.name] = _float32_grid(min(lo, 0.0), max(hi, 0.0) or 1.0)
    acts[BOX_ENCODINGS] = _float32_grid(min(float(box.min()), 0.0), max(float(box.max()), 0.0))
    acts[CLASS_LOGITS] = _float32_grid(min(float(logits.min()), 0.0), max(float(logits.max()), 0.0))
    acts[CLASS_SCORES] = SOFTMAX_GRID
    if scheme == "per-channel":  # TF Lite's int8 CONCATENATION takes its inputs on its own grid
        acts.update({u.name: acts[BOX_ENCODINGS] for u in boxes} | {u.name: acts[CLASS_LOGITS] for u in classes})
    fold = _folds(a, c)
    means = {n: observer.mean(n) for n in names}
    if fold:  # the stem computes on r = (normalised - c) / a
        weighted[0] = _fold_normalisation(weighted[0], a, c)
        means[weighted[0].name] = (means[weighted[0].name] - c) / a
    inputs = dict(zip([u.name for u in body], ["input", *[u.name for u in body[:-1]]], strict=True))
    for i, feed in enumerate(feeds):  # the heads read the feature maps
        inputs.update({boxes[i].name: feed, classes[i].name: feed})
    weights = {u.name: _weight_grid(u.weight, scheme, bias=u.bias, input_scale=acts[inputs[u.name]].scale)
               for u in weighted}
    biases = {u.name: _bias_corrected(u, weights[u.name], means[u.name]) for u in weighted} if bias_correction else {}
    return Grids(acts, weights, "calibrated", scheme, (a, c) if fold else None, biases)


def postprocess_options(model: nn.Module) -> dict[str, Any]:
    """The ``TFLite_Detection_PostProcess`` options: an imported file's own, else the model's post-processing."""
    source = weights_info(model).source
    recorded = (source.details.get("postprocess_op") if source is not None else None) or {}
    if recorded:
        return dict(recorded)
    cfg = model.config
    pp = cfg.postprocess
    sx, sy, sw, sh = cfg.scale_factors  # ours (x, y, w, h) -> TF's y, x, h, w scales
    options: dict[str, Any] = {
        "max_detections": int(pp.max_detections), "max_classes_per_detection": 1,
        "nms_score_threshold": float(pp.score_threshold), "nms_iou_threshold": float(pp.iou_threshold),
        "num_classes": int(cfg.num_classes), "y_scale": float(sy), "x_scale": float(sx), "h_scale": float(sh),
        "w_scale": float(sw)}
    if pp.nms_mode == "per_class":  # TF's "regular" NMS: per class, then the best over classes
        options.update(use_regular_nms=True, detections_per_class=int(pp.pre_nms_top_k))
    return options


def _written_ssd_units(model: nn.Module, grids: Grids) -> tuple[list[Unit], list[str], list[Unit], list[Unit]]:
    """:func:`ssd_units` as the file holds them (the stem on the file's input, corrected biases)."""
    body, feeds, boxes, classes = ssd_units(model)
    if grids.input_map is not None:
        body[0] = _fold_normalisation(body[0], *grids.input_map)

    def written(us: list[Unit]) -> list[Unit]:
        return [replace(u, bias=grids.biases[u.name]) if u.name in grids.biases else u for u in us]
    return written(body), feeds, written(boxes), written(classes)


@torch.no_grad()
def ssd_flatbuffer(model: nn.Module, grids: Grids, *, metadata: dict[str, bytes] | None = None) -> bytes:
    """The ``.tflite`` bytes of an SSD on ``grids``: uint8 pixels in, the four float outputs of
    ``TFLite_Detection_PostProcess`` (boxes, classes, scores, count) out, as Google's ``detect.tflite``. In the
    int8 scheme the box encodings and scores go to the op as uint8 on the same grids (the op reads uint8 or float)."""
    from ..weights import BOX_ENCODINGS, CLASS_LOGITS, CLASS_SCORES
    from .writer import flexbuffer_map

    cfg = model.config
    if cfg.postprocess.score_fn not in ("sigmoid", "softmax"):
        raise ValueError(f"score function {cfg.postprocess.score_fn!r}: the export writes sigmoid or softmax")
    body, feeds, boxes, classes = _written_ssd_units(model, grids)
    h, w = cfg.image_size
    shapes = _unit_shapes(model, (h, w), [u.name for u in body + boxes + classes])
    acts, int8, dtype = grids.activations, grids.int8, _dtype(grids)
    g = GraphWriter()
    x = g.tensor("normalized_input_image_tensor", (1, h, w, 3), "uint8", **_grid_kwargs(acts["input"]))
    current, current_grid = x, acts["input"]
    if int8:
        current = g.tensor("normalized_input_image_tensor/int8", (1, h, w, 3), "int8",
                           **_grid_kwargs(acts["input"], True))
        g.operator("QUANTIZE", [x], [current])
    out: dict[str, tuple[int, ActivationGrid]] = {}
    for u in body:  # the backbone, then the extras, in order (each extra reads the one before)
        y = _conv(g, u, current, current_grid, acts[u.name], grids.weights[u.name], shapes[u.name],
                  shapes.get(f"{u.name}:in"), _activation(u, acts[u.name], grids.source), int8)
        out[u.name] = (y, acts[u.name])
        current, current_grid = y, acts[u.name]
    n_cls = cfg.num_classes + 1
    box_parts, cls_parts = [], []
    for i, name in enumerate(feeds):
        src, src_grid = out[name]
        for u, parts, is_box in ((boxes[i], box_parts, True), (classes[i], cls_parts, False)):
            y = _conv(g, u, src, src_grid, acts[u.name], grids.weights[u.name], shapes[u.name], None, "NONE", int8)
            _, fh, fw, ch = shapes[u.name]
            count = fh * fw * (ch // (4 if is_box else n_cls))
            shape = (1, count, 1, 4) if is_box else (1, count, n_cls)
            r = g.tensor(f"{u.name}/reshape", shape, dtype, **_grid_kwargs(acts[u.name], int8))
            g.operator("RESHAPE", [y, g.constant(f"{u.name}/shape", np.array(shape, dtype=np.int32))], [r],
                       new_shape=shape)
            parts.append(r)
    anchors_total = sum(g.tensors[p].shape[1] for p in box_parts)
    concat = g.tensor("concat", (1, anchors_total, 1, 4), dtype, **_grid_kwargs(acts[BOX_ENCODINGS], int8))
    g.operator("CONCATENATION", box_parts, [concat], axis=1, version=_version("CONCATENATION", int8))
    box = g.tensor("Squeeze", (1, anchors_total, 4), dtype, **_grid_kwargs(acts[BOX_ENCODINGS], int8))
    g.operator("RESHAPE", [concat, g.constant("Squeeze/shape", np.array([1, anchors_total, 4], dtype=np.int32))],
               [box], new_shape=(1, anchors_total, 4))
    logits = g.tensor("concat_1", (1, anchors_total, n_cls), dtype, **_grid_kwargs(acts[CLASS_LOGITS], int8))
    g.operator("CONCATENATION", cls_parts, [logits], axis=1, version=_version("CONCATENATION", int8))
    scores = g.tensor("convert_scores", (1, anchors_total, n_cls), dtype, **_grid_kwargs(acts[CLASS_SCORES], int8))
    score_op = "LOGISTIC" if cfg.postprocess.score_fn == "sigmoid" else "SOFTMAX"
    g.operator(score_op, [logits], [scores], version=_version(score_op, int8),
               **({} if cfg.postprocess.score_fn == "sigmoid" else {"beta": 1.0}))
    if int8:  # the post-processing op reads uint8: the same grids, zero point + 128
        for name, grid in (("Squeeze", BOX_ENCODINGS), ("convert_scores", CLASS_SCORES)):
            src = box if name == "Squeeze" else scores
            u8 = g.tensor(f"{name}/uint8", g.tensors[src].shape, "uint8", **_grid_kwargs(acts[grid]))
            g.operator("QUANTIZE", [src], [u8])
            box, scores = (u8, scores) if name == "Squeeze" else (box, u8)
    table = model.anchors((h, w), device="cpu").detach().float()[:, list(TF_BOX_ORDER)]  # (yc, xc, h, w)
    if table.shape[0] != anchors_total:
        raise ValueError(f"{table.shape[0]} anchors, the heads predict {anchors_total}")
    # uint8 anchors on a min/max grid, as TF's converter writes them: with float32 anchors the op's decoding
    # differs (measured on the COCO SSD: the same scores and boxes in, other detections out)
    a_grid = ActivationGrid.from_range(min(float(table.min()), 0.0), float(table.max()))
    anchors = g.constant("anchors", a_grid.quantize(table).numpy().astype(np.uint8), **_grid_kwargs(a_grid))
    outputs = [g.tensor(f"{POSTPROCESS_OP}{suffix}", (), "float32") for suffix in ("", ":1", ":2", ":3")]
    g.operator("CUSTOM", [box, scores, anchors], outputs, custom_code=POSTPROCESS_OP,
               custom_options=flexbuffer_map(postprocess_options(model)))
    return g.finish([x], outputs, metadata=metadata)


def _unit_shapes(model: nn.Module, size: tuple[int, int], names: list[str]) -> dict[str, tuple[int, ...]]:
    """NHWC shapes of the named modules' inputs (``name:in``) and outputs at input ``size``."""
    shapes: dict[str, tuple[int, ...]] = {}
    modules = dict(model.named_modules())

    def record(n: str) -> Any:
        def hook(m: nn.Module, i: Any, o: torch.Tensor) -> None:
            shapes[f"{n}:in"] = tuple(i[0].permute(0, 2, 3, 1).shape)
            shapes[n] = tuple(o.permute(0, 2, 3, 1).shape)
        return hook

    hooks = [modules[n].register_forward_hook(record(n)) for n in names]
    try:
        model.eval()(torch.zeros(1, 3, *size))
    finally:
        for h in hooks:
            h.remove()
    return shapes
