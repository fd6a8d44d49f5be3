"""The exact cost of a model, layer by layer: parameters, BN running statistics, MACs, activation memory.

Counts come from running the real model once on a ``meta`` copy (shapes only, no data, no FLOPs
spent) with forward hooks on every convolution, linear layer and BatchNorm, and a function mode that
sees pooling done with plain tensor ops (MobileNetV1 pools with ``x.mean((2, 3))``). Nothing here is
a hand-written formula of the architecture, so the numbers cannot drift from the model.

Counting rules (what "MACs" and "params" mean here):

* MACs (multiply-accumulates, the paper's "mult-adds") of a convolution: output elements x
  (in_channels / groups) x kernel height x kernel width; of a linear layer: in x out. Bias adds,
  BatchNorm, activations and pooling are counted as 0 MACs (the paper's convention: BN folds into
  the convolution at inference, pooling is additions only).
* A 1x1 convolution applied to a 1x1 map (the tf preset's classifier) is reported as ``FC``: it is
  the same operation as ``nn.Linear`` and the paper's Table 1 calls it FC.
* Parameters are split into conv/FC ``weights``, ``biases``, BN ``bn_gamma`` and ``bn_beta``;
  BN ``running_mean``/``running_var`` are buffers (Keras' "non-trainable params"). The BN step
  counter ``num_batches_tracked`` is neither. ``PARAM_COUNTS`` names the sums that published
  tables use (see ``CONVENTIONS``).
* Input sizes are the layer's logical input, before any TF "SAME" padding module in front of it.
* Activations: elements of every profiled layer's output (times the batch) and their bytes at the
  chosen dtype.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .model import MobileNetConfig, MobileNetV1
from .table import Table

LAYER_TYPES = ("full conv", "depthwise conv", "grouped conv", "1x1 conv", "FC", "BN", "pool", "other")
# The types that carry MACs and weights: the rows of the paper's Table 2.
COMPUTE_TYPES = ("1x1 conv", "depthwise conv", "full conv", "grouped conv", "FC")

PARAM_KINDS = ("weights", "biases", "bn_gamma", "bn_beta", "running_mean", "running_var")
PARAM_COUNTS: dict[str, tuple[str, ...]] = {
    # conv and FC weights only: what reproduces the paper's Table 2 (74.59% / 24.33%) and Tables 4-7
    "weights": ("weights",),
    # every nn.Parameter (Keras' "Trainable params")
    "learnable": ("weights", "biases", "bn_gamma", "bn_beta"),
    # parameters and BN running statistics (Keras' "Total params")
    "total": ("weights", "biases", "bn_gamma", "bn_beta", "running_mean", "running_var"),
    # weights, biases and three of the four BN vectors per channel: the only per-channel count that
    # reproduces all 16 rows of TF-slim's "Million Parameters" column (with 1001 classes)
    "slim": ("weights", "biases", "bn_beta", "running_mean", "running_var"),
}


@dataclass(frozen=True)
class Convention:
    """How a published table counted: the model it measured and what it summed."""

    name: str
    description: str
    overrides: dict[str, Any]  # MobileNetV1 keyword overrides (preset, num_classes)
    params: str  # a key of PARAM_COUNTS
    macs_include_fc: bool = True


CONVENTIONS: dict[str, Convention] = {
    "paper": Convention(
        "paper", "paper preset, 1000 classes; MACs of every conv and the FC layer; params = conv/FC weights",
        {"preset": "paper", "num_classes": 1000}, "weights"),
    "slim": Convention(
        "slim", "tf preset, 1001 classes (slim's background class); MACs of every conv and the FC layer; "
                "params = weights + biases + 3 values per BN channel",
        {"preset": "tf", "num_classes": 1001}, "slim"),
}


# ---------------------------------------------------------------------------------------------
# Per-layer and per-model records
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerProfile:
    """One conv / linear / BN / pool layer as it ran. Shapes are per sample: (C, H, W) or (C,)."""

    name: str  # module path ("blocks.0.dw.conv"); "pool" for pooling done by a tensor op
    type: str  # one of LAYER_TYPES
    stride: int
    filter_shape: str  # paper style: "3x3x3x32", "3x3x32 dw", "1x1x32x64", "1024x1000", "Pool 7x7"
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    weights: int = 0
    biases: int = 0
    bn_gamma: int = 0
    bn_beta: int = 0
    running_mean: int = 0
    running_var: int = 0
    macs: int = 0  # for the whole batch
    activations: int = 0  # output elements for the whole batch
    activation_bytes: int = 0

    @property
    def params(self) -> int:
        """Learnable parameters of this layer (weights, biases, BN gamma and beta)."""
        return self.weights + self.biases + self.bn_gamma + self.bn_beta

    @property
    def buffers(self) -> int:
        """BN running statistics of this layer (running_mean + running_var)."""
        return self.running_mean + self.running_var

    def count(self, kinds: Iterable[str]) -> int:
        return sum(getattr(self, k) for k in kinds)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"], d["output_shape"] = list(self.input_shape), list(self.output_shape)
        d["params"], d["buffers"] = self.params, self.buffers
        return d


@dataclass(frozen=True)
class ModelProfile:
    """The cost of one model at one input size: per-layer records and totals (``to_dict`` for JSON)."""

    name: str
    config: dict[str, Any]
    input_shape: tuple[int, int, int, int]  # (B, C, H, W)
    dtype: str
    layers: tuple[LayerProfile, ...]
    model_params: int  # sum of p.numel() over model.parameters(), to check that no layer was missed
    model_buffers: int  # BN running statistics found on the model

    def _sum(self, attr: str) -> int:
        return sum(getattr(layer, attr) for layer in self.layers)

    @property
    def params(self) -> int:
        """Learnable parameters (every ``nn.Parameter``)."""
        return self._sum("params")

    @property
    def buffers(self) -> int:
        """BN running statistics (running_mean + running_var), Keras' non-trainable parameters."""
        return self._sum("buffers")

    @property
    def macs(self) -> int:
        return self._sum("macs")

    @property
    def activations(self) -> int:
        return self._sum("activations")

    @property
    def activation_bytes(self) -> int:
        return self._sum("activation_bytes")

    def count(self, what: str | Iterable[str]) -> int:
        """Parameters summed by a ``PARAM_COUNTS`` name ("weights", "learnable", "total", "slim") or kinds."""
        kinds = PARAM_COUNTS[what] if isinstance(what, str) else tuple(what)
        unknown = sorted(set(kinds) - set(PARAM_KINDS))
        if unknown:
            raise ValueError(f"unknown parameter kind(s) {unknown}; known: {PARAM_KINDS}")
        return sum(layer.count(kinds) for layer in self.layers)

    def macs_of(self, types: Iterable[str]) -> int:
        wanted = set(types)
        return sum(layer.macs for layer in self.layers if layer.type in wanted)

    def to_dict(self, *, layers: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "config": self.config,
            "input_shape": list(self.input_shape),
            "dtype": self.dtype,
            "params": self.params,
            "buffers": self.buffers,
            "macs": self.macs,
            "activations": self.activations,
            "activation_bytes": self.activation_bytes,
            "param_counts": {k: self.count(k) for k in PARAM_COUNTS},
            "by_type": {t: asdict(s) for t, s in by_type(self).items()},
        }
        if layers:
            d["layers"] = [layer.to_dict() for layer in self.layers]
        return d


# ---------------------------------------------------------------------------------------------
# Walking the model
# ---------------------------------------------------------------------------------------------

def _classify_conv(conv: nn.Conv2d, in_hw: tuple[int, int]) -> tuple[str, str]:
    """(type, paper-style filter shape) of a convolution seen on an input of spatial size in_hw."""
    kh, kw = conv.kernel_size
    cin, cout, g = conv.in_channels, conv.out_channels, conv.groups
    if g == 1 and (kh, kw) == (1, 1) and in_hw == (1, 1):
        return "FC", f"{cin}x{cout}"  # a 1x1 conv on a 1x1 map is a fully connected layer
    if g == 1:
        return ("1x1 conv" if (kh, kw) == (1, 1) else "full conv"), f"{kh}x{kw}x{cin}x{cout}"
    if g == cin and cout == cin:
        return "depthwise conv", f"{kh}x{kw}x{cin} dw"
    if g == cin:  # depthwise with a channel multiplier
        return "depthwise conv", f"{kh}x{kw}x{cin}x{cout // cin} dw"
    return "grouped conv", f"{kh}x{kw}x{cin // g}x{cout} g{g}"


class _PoolAndPadSpy(TorchFunctionMode):
    """Sees the tensor ops that no module hook can: padding (to report pre-padding input sizes) and
    pooling done functionally, e.g. MobileNetV1's global ``x.mean((2, 3), keepdim=True)``."""

    # function -> (kind, adaptive)
    POOLS: dict[Callable[..., Any], tuple[str, bool]] = {
        F.adaptive_avg_pool2d: ("Avg", True), F.avg_pool2d: ("Avg", False),
        F.adaptive_max_pool2d: ("Max", True), F.max_pool2d: ("Max", False),
        # what nn.MaxPool2d / nn.AdaptiveMaxPool2d call with return_indices=True
        F.adaptive_max_pool2d_with_indices: ("Max", True), F.max_pool2d_with_indices: ("Max", False),
    }

    def __init__(self, on_pool: Callable[..., None]) -> None:
        super().__init__()
        self.on_pool = on_pool
        self.pre_pad: dict[int, tuple[int, ...]] = {}  # id(padded tensor) -> shape before padding
        self._keep: list[torch.Tensor] = []  # keep padded tensors alive so their ids stay unique

    # Shape-preserving ops: on meta tensors their only effect is the shape, and some (BatchNorm, ReLU6's
    # hardtanh) have Python-only meta kernels (seconds to import, ~0.1 s per model), so they are skipped.
    SHAPE_ONLY: frozenset[Callable[..., Any]] = frozenset(
        {F.relu, F.relu6, F.hardtanh, torch.relu, torch.relu_, F.batch_norm})

    ADAPTIVE = frozenset({F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.adaptive_max_pool2d_with_indices})

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        x = args[0] if args else None
        if func in self.SHAPE_ONLY and isinstance(x, torch.Tensor) and x.is_meta:
            inplace = func is torch.relu_ or kwargs.get("inplace", args[-1] if len(args) > 1 else False) is True
            return x if inplace else torch.empty_like(x)
        if func in (torch.Tensor.mean, torch.mean) and isinstance(x, torch.Tensor) and x.is_meta:
            out = self._meta_mean(x, args, kwargs)  # torch's meta mean imports torch._dynamo (~3 s)
        elif func in self.ADAPTIVE and isinstance(x, torch.Tensor) and x.is_meta:
            size = _pair(kwargs.get("output_size", args[1] if len(args) > 1 else None))  # ...and these (~3 s)
            out = x.new_empty((*x.shape[:-2], *(n or d for n, d in zip(size, x.shape[-2:], strict=True))))
            indices = kwargs.get("return_indices", len(args) > 2 and args[2])
            if func is F.adaptive_max_pool2d_with_indices or (func is F.adaptive_max_pool2d and indices):
                out = (out, torch.empty_like(out, dtype=torch.long))
        elif func is F.linear and isinstance(x, torch.Tensor) and x.is_meta:  # so does meta addmm
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            out = x.new_empty((*x.shape[:-1], weight.shape[0]))
        else:
            out = func(*args, **kwargs)
        y = out[0] if isinstance(out, tuple) else out  # max pooling may also return indices
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or not isinstance(y, torch.Tensor):
            return out
        if func is F.pad:
            self.pre_pad[id(out)] = self.pre_pad.get(id(x), tuple(x.shape))
            self._keep.append(out)
        elif func in (torch.Tensor.mean, torch.mean) and self._is_spatial(args, kwargs):
            self.on_pool("Avg", x, y, (x.shape[-2], x.shape[-1]), 1)
        elif func in self.POOLS:
            kind, glob = self.POOLS[func]
            if glob:  # adaptive pooling to 1x1 is global pooling; otherwise report the output grid
                kernel, stride = (x.shape[-2], x.shape[-1]) if tuple(y.shape[-2:]) == (1, 1) else None, 1
            else:
                kernel = _pair(kwargs.get("kernel_size", args[1] if len(args) > 1 else 1))
                s = kwargs.get("stride", args[2] if len(args) > 2 else None)
                stride = _pair(s)[0] if s not in (None, [], ()) else kernel[0]  # torch: stride defaults to kernel
            self.on_pool(kind, x, y, kernel, int(stride))
        return out

    @staticmethod
    def _meta_mean(x: torch.Tensor, args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Tensor:
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        keepdim = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
        dims = set(range(x.ndim)) if dim is None else {
            d % x.ndim for d in (dim if isinstance(dim, (tuple, list)) else (dim,))}
        shape = [1 if i in dims else n for i, n in enumerate(x.shape) if keepdim or i not in dims]
        return x.new_empty(shape, dtype=kwargs.get("dtype") or x.dtype)

    @staticmethod
    def _is_spatial(args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        if dim is None:
            return False
        dims = {d % 4 for d in (dim if isinstance(dim, (tuple, list)) else (dim,))}
        return dims == {2, 3}


def _pair(v: Any) -> tuple[Any, Any]:
    """2 -> (2, 2); (2, 3) -> (2, 3); (None, 3) stays (adaptive pooling: None keeps the input size)."""
    return (v, v) if isinstance(v, int) or v is None else (v[0], v[-1])


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def profile_model(
    model: nn.Module,
    resolution: int | tuple[int, int] | None = None,
    batch: int = 1,
    *,
    dtype: torch.dtype = torch.float32,
    in_chans: int | None = None,
    name: str | None = None,
) -> ModelProfile:
    """Profile ``model`` on a (batch, in_chans, H, W) input by running a ``meta`` copy of it once.

    ``resolution`` defaults to ``model.config.resolution`` (224 without a config); ``dtype`` only sets
    the bytes per activation element. The model itself is not run, and is left as it was
    (a model already on the meta device is run directly, its train/eval mode restored afterwards).
    Raises RuntimeError if a module with parameters does not run exactly once (shared or unused layers).
    """
    cfg = getattr(model, "config", None)
    if resolution is None:
        resolution = cfg.resolution if cfg is not None else 224
    h, w = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    if not (isinstance(batch, int) and batch >= 1):
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
    c = in_chans if in_chans is not None else (cfg.in_chans if cfg is not None else 3)
    esize = _element_size(dtype)

    # A meta copy: same modules and shapes, no storage, no arithmetic (fast even for 29M-param models).
    meta = model if _on_meta(model) else copy.deepcopy(model).to("meta")
    modes = {m: m.training for m in meta.modules()}  # restored below when ``model`` itself was on meta
    meta.eval()  # BN uses running statistics and dropout is off, as at inference
    names = {m: n for n, m in meta.named_modules()}
    rows: list[LayerProfile] = []

    def record(row: LayerProfile) -> None:
        rows.append(row)

    def acts(out: torch.Tensor) -> dict[str, int]:
        return {"activations": out.numel(), "activation_bytes": out.numel() * esize}

    spy: _PoolAndPadSpy

    def in_shape(x: torch.Tensor) -> tuple[int, ...]:
        return tuple(spy.pre_pad.get(id(x), tuple(x.shape)))[1:]

    def conv_hook(m: nn.Conv2d, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        x = inp[0]
        kind, shape = _classify_conv(m, tuple(x.shape[-2:]))
        kh, kw = m.kernel_size
        record(LayerProfile(
            name=names[m], type=kind, stride=int(m.stride[0]), filter_shape=shape,
            input_shape=in_shape(x), output_shape=tuple(out.shape[1:]),
            weights=m.weight.numel(), biases=m.bias.numel() if m.bias is not None else 0,
            macs=out.numel() * (m.in_channels // m.groups) * kh * kw, **acts(out)))

    def linear_hook(m: nn.Linear, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        x = inp[0]
        record(LayerProfile(
            name=names[m], type="FC", stride=1, filter_shape=f"{m.in_features}x{m.out_features}",
            input_shape=tuple(x.shape[1:]), output_shape=tuple(out.shape[1:]),
            weights=m.weight.numel(), biases=m.bias.numel() if m.bias is not None else 0,
            macs=(x.numel() // m.in_features) * m.in_features * m.out_features, **acts(out)))

    def bn_hook(m: nn.modules.batchnorm._BatchNorm, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        n = lambda t: t.numel() if t is not None else 0  # noqa: E731
        record(LayerProfile(
            name=names[m], type="BN", stride=1, filter_shape=f"{m.num_features} ch",
            input_shape=in_shape(inp[0]), output_shape=tuple(out.shape[1:]),
            bn_gamma=n(m.weight), bn_beta=n(m.bias), running_mean=n(m.running_mean), running_var=n(m.running_var),
            **acts(out)))

    def other_hook(m: nn.Module, inp: tuple[Any, ...], out: Any) -> None:
        # a leaf module with parameters that we cannot cost: keep its parameters in the totals
        shape_in = tuple(inp[0].shape[1:]) if inp and isinstance(inp[0], torch.Tensor) else ()
        shape_out = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else ()
        record(LayerProfile(
            name=names[m], type="other", stride=1, filter_shape=type(m).__name__, input_shape=shape_in,
            output_shape=shape_out, weights=sum(p.numel() for p in m.parameters(recurse=False)),
            **(acts(out) if isinstance(out, torch.Tensor) else {})))

    def on_pool(kind: str, x: torch.Tensor, out: torch.Tensor, kernel: tuple[int, int] | None,
                stride: int) -> None:
        size = f" {kernel[0]}x{kernel[1]}" if kernel else ""
        record(LayerProfile(
            name="pool", type="pool", stride=stride, filter_shape=f"{kind} Pool{size}",
            input_shape=in_shape(x), output_shape=tuple(out.shape[1:]), **acts(out)))

    handles = []
    for m in meta.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            handles.append(m.register_forward_hook(bn_hook))
        elif any(True for _ in m.parameters(recurse=False)):
            handles.append(m.register_forward_hook(other_hook))
    spy = _PoolAndPadSpy(on_pool)
    try:
        with torch.no_grad(), spy:
            meta(torch.zeros(batch, c, h, w, device="meta"))
    finally:
        for hd in handles:
            hd.remove()
        for m, training in modes.items():
            m.training = training

    model_buffers = sum(
        b.numel() for m in meta.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for b in (m.running_mean, m.running_var) if b is not None)
    profile = ModelProfile(
        name=name or _default_name(model), config=cfg.to_dict() if cfg is not None else {},
        input_shape=(batch, c, h, w), dtype=str(dtype).removeprefix("torch."), layers=tuple(rows),
        model_params=sum(p.numel() for p in meta.parameters()), model_buffers=model_buffers)
    # Every parameter must belong to a layer that ran; a module used twice would be counted twice.
    if profile.params != profile.model_params:
        raise RuntimeError(f"profiled layers hold {profile.params} parameters but the model has "
                           f"{profile.model_params}: a parameterised module did not run exactly once")
    return profile


def _on_meta(model: nn.Module) -> bool:
    tensors = [*model.parameters(), *model.buffers()]
    return bool(tensors) and all(t.is_meta for t in tensors)


def _default_name(model: nn.Module) -> str:
    cfg = getattr(model, "config", None)
    if isinstance(cfg, MobileNetConfig):
        from .zoo import variant_name

        return variant_name(cfg.width_mult, cfg.resolution)
    return type(model).__name__


def profile_config(config: MobileNetConfig | dict[str, Any], *, batch: int = 1,
                   dtype: torch.dtype = torch.float32, name: str | None = None) -> ModelProfile:
    """Profile a MobileNetV1 built from ``config`` directly on the meta device (no weights allocated)."""
    with torch.device("meta"):
        model = MobileNetV1.from_config(config)
    return profile_model(model, batch=batch, dtype=dtype, name=name)


def profile_variant(name: str, *, batch: int = 1, dtype: torch.dtype = torch.float32,
                    **overrides: Any) -> ModelProfile:
    """Profile a named variant (``mobilenet_v1_050_160``) with config overrides; unknown name -> ValueError."""
    from .zoo import variant_config

    return profile_config(variant_config(name, **overrides), batch=batch, dtype=dtype, name=name)


def profile_grid(*, batch: int = 1, dtype: torch.dtype = torch.float32, **overrides: Any) -> list[ModelProfile]:
    """Profiles of the 16 named variants (α descending, then resolution descending) with ``overrides``."""
    from .zoo import list_models

    return [profile_variant(n, batch=batch, dtype=dtype, **overrides) for n in list_models()]


# ---------------------------------------------------------------------------------------------
# Views: Table 1, Table 2
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TypeShare:
    """One layer type's MACs and parameters and their percent of the model's total."""

    macs: int
    params: int
    macs_pct: float
    params_pct: float


def by_type(profile: ModelProfile, params: str | Iterable[str] = "weights") -> dict[str, TypeShare]:
    """Table 2: MACs and parameters per compute layer type, as percent of the total over those types.

    The default counts conv/FC weights only (no biases, no BN): with 1000 classes that reproduces
    the paper's 74.59% / 1.06% / 0.02% / 24.33% parameter shares exactly.
    """
    kinds = PARAM_COUNTS[params] if isinstance(params, str) else tuple(params)
    totals: dict[str, list[int]] = {}
    for layer in profile.layers:
        if layer.type in COMPUTE_TYPES:
            t = totals.setdefault(layer.type, [0, 0])
            t[0] += layer.macs
            t[1] += layer.count(kinds)
    all_macs = sum(t[0] for t in totals.values()) or 1
    all_params = sum(t[1] for t in totals.values()) or 1
    order = {t: i for i, t in enumerate(COMPUTE_TYPES)}
    return {k: TypeShare(m, p, 100.0 * m / all_macs, 100.0 * p / all_params)
            for k, (m, p) in sorted(totals.items(), key=lambda kv: order[kv[0]])}


def table1(profile: ModelProfile) -> list[tuple[str, str, str]]:
    """The model's rows in the paper's Table 1 format: ("Conv dw / s1", "3x3x32 dw", "112x112x32")."""
    rows = []
    for layer in profile.layers:
        if layer.type in ("BN", "other"):
            continue
        label = {"depthwise conv": "Conv dw", "FC": "FC"}.get(layer.type, "Conv")
        filt = layer.filter_shape
        if layer.type == "pool":  # "Avg Pool 7x7" -> type "Avg Pool", filter "Pool 7x7"
            kind, _, size = layer.filter_shape.partition(" Pool")
            label, filt = f"{kind} Pool", f"Pool{size}"
        rows.append((f"{label} / s{layer.stride}", filt, _paper_size(layer.input_shape)))
    return rows


def _paper_size(shape: Sequence[int]) -> str:
    """(C, H, W) -> "HxWxC"; a vector (C,) is a 1x1xC map, as the paper writes the FC input."""
    if len(shape) == 1:
        return f"1x1x{shape[0]}"
    c, *hw = shape
    return "x".join(str(s) for s in (*hw, c))


def _m(n: int, digits: int = 2) -> float:
    return round(n / 1e6, digits)


def layers_table(profile: ModelProfile) -> Table:
    """Every profiled layer of one model, then a total row."""
    cols = ["layer", "type", "stride", "filter shape", "input", "output", "params", "BN stats", "MACs",
            "act bytes"]
    rows: list[list[Any]] = [
        [layer.name, layer.type, layer.stride, layer.filter_shape, _paper_size(layer.input_shape),
         _paper_size(layer.output_shape), layer.params, layer.buffers, layer.macs, layer.activation_bytes]
        for layer in profile.layers]
    rows.append(["total", "", None, "", "", "", profile.params, profile.buffers, profile.macs,
                 profile.activation_bytes])
    return Table(cols, rows, caption=f"{profile.name}: {_describe(profile)}")


def summary_table(profile: ModelProfile) -> Table:
    """One model's totals, parameters split by kind."""
    p = profile
    rows: list[list[Any]] = [
        ["MACs", p.macs, "every conv and FC layer, batch included"],
        ["learnable parameters", p.params, "conv/FC weights + biases + BN gamma + BN beta"],
        ["  conv/FC weights", p.count(["weights"]), "what the paper's Tables 2 and 4-7 count"],
        ["  biases", p.count(["biases"]), "the classifier's"],
        ["  BN gamma + beta", p.count(["bn_gamma", "bn_beta"]), ""],
        ["BN running statistics", p.buffers, "running_mean + running_var (Keras' non-trainable)"],
        ["activations (elements)", p.activations, "outputs of every conv/FC/BN/pool layer"],
        ["activations (bytes)", p.activation_bytes, p.dtype],
    ]
    return Table(["quantity", "count", "what"], rows, caption=f"{p.name}: {_describe(p)}")


def _describe(p: ModelProfile) -> str:
    c = p.config
    bits = [f"input {'x'.join(map(str, p.input_shape))}"]
    if c:
        bits = [f"width {c['width_mult']}", f"{c['preset']} preset", f"{c['num_classes']} classes"] + (
            ["full convs"] if c.get("conv_type") == "full" else []) + (["shallow"] if c.get("shallow") else []) + bits
    return ", ".join(bits)


def grid_table(profiles: Sequence[ModelProfile], *, compare: bool = False, params: str = "slim") -> Table:
    """One row per model: MACs, parameters (``params`` count) and learnable parameters; with ``compare``,
    TF-slim's published columns beside ours and whether ours round to them."""
    from .published import SLIM, SLIM_V1

    cols = ["model", "MACs (M)", f"params (M, {params})", "learnable (M)", "BN stats (M)", "act (MiB)"]
    if compare:
        cols += ["slim MACs (M)", "slim params (M)", "match", "top-1", "top-5"]
    rows: list[list[Any]] = []
    for p in profiles:
        row: list[Any] = [p.name, _m(p.macs), _m(p.count(params), 3), _m(p.params, 3), _m(p.buffers, 3),
                          round(p.activation_bytes / 2**20, 2)]
        if compare:
            pub = SLIM_V1.get(p.name)
            if pub is None:
                row += [None, None, "", None, None]
            else:
                ok = _rounds_to(p.macs / 1e6, pub.macs_m, 0) and _rounds_to(p.count(params) / 1e6, pub.params_m, 2)
                row += [pub.macs_m, pub.params_m, "yes" if ok else "no", pub.top1, pub.top5]
        rows.append(row)
    first = profiles[0] if profiles else None
    caption = "MobileNet v1 grid"
    if first is not None:
        cfg = first.config
        matching = [c for c in CONVENTIONS.values() if c.params == params
                    and all(cfg.get(k) == v for k, v in c.overrides.items())]
        what = (f"{matching[0].name} convention: {matching[0].description}" if matching else
                f"{cfg.get('preset')} preset, {cfg.get('num_classes')} classes; params = "
                + " + ".join(PARAM_COUNTS[params]))
        caption += f", {what}; batch {first.input_shape[0]}, activations in {first.dtype}"
    notes = []
    if compare:
        notes = [f"{n}: {SLIM_V1[n].note}" for n in SLIM_V1 if SLIM_V1[n].note and n in {p.name for p in profiles}]
        notes.append(f"published columns: {SLIM}")
    digits = {f"params (M, {params})": 3, "learnable (M)": 3, "BN stats (M)": 3, "slim MACs (M)": 0,
              "top-1": 1, "top-5": 1}
    return Table(cols, rows, caption=caption, notes=_dedupe_notes(notes), digits=digits)


def _dedupe_notes(notes: list[str]) -> list[str]:
    seen: dict[str, list[str]] = {}
    for n in notes:
        head, _, body = n.partition(": ")
        seen.setdefault(body, []).append(head)
    return [f"{', '.join(heads)}: {body}" if body else heads[0] for body, heads in seen.items()]


def _rounds_to(value: float, published: float, digits: int) -> bool:
    """Whether ``value`` rounded half up to ``digits`` decimals equals ``published``."""
    scale = 10**digits
    return math.isclose(math.floor(value * scale + 0.5) / scale, published, abs_tol=1e-9)


def paper_tables(*, batch: int = 1) -> list[Table]:
    """The paper's Tables 1, 2 and 4-7, printed values beside ours."""
    from .published import PAPER, PAPER_MODELS, TABLE2, table1_expanded

    base = profile_config(MobileNetConfig(), batch=batch, name="mobilenet_v1_100_224")
    ours = table1(base)
    printed = table1_expanded()
    t1_rows = []
    for i, row in enumerate(printed):
        mine = ours[i] if i < len(ours) else ("", "", "")
        same = (row.type_stride, row.filter_shape, row.input_size) == mine
        t1_rows.append([row.type_stride, row.filter_shape, row.input_size, *mine, "yes" if same else "no"])
    t1 = Table(["paper type/stride", "paper filter", "paper input", "ours type/stride", "ours filter",
                "ours input", "same"], t1_rows, caption=f"Table 1 ({PAPER}) vs the profiled model",
               notes=_dedupe_notes([f"{r.type_stride} {r.filter_shape}: {r.note}" for r in printed if r.note]))

    shares = by_type(base)
    t2 = Table(["layer type", "paper mult-adds %", "ours mult-adds %", "paper params %", "ours params %"],
               [[r.printed_type, r.mult_adds_pct, shares[r.layer_type].macs_pct, r.params_pct,
                 shares[r.layer_type].params_pct] for r in TABLE2],
               caption="Table 2 vs ours (1000 classes; parameters = conv/FC weights only)",
               notes=[f"{r.printed_type}: {r.note}" for r in TABLE2 if r.note])

    rows, notes = [], []
    for pm in PAPER_MODELS:
        p = profile_config(MobileNetConfig(**pm.overrides), batch=batch, name=pm.name)
        rows.append([pm.table, pm.name, pm.top1, pm.mult_adds_m, _m(p.macs), pm.params_m,
                     _m(p.count("weights"), 3)])
        if pm.note:
            notes.append(f"{pm.table} {pm.name}: {pm.note}")
    t47 = Table(["table", "model", "top-1 %", "paper mult-adds (M)", "ours MACs (M)", "paper params (M)",
                 "ours weights (M)"], rows, caption="Tables 4-7 vs ours (paper convention: "
               + CONVENTIONS["paper"].description + ")", notes=_dedupe_notes(notes),
               digits={"top-1 %": 1, "paper mult-adds (M)": 0, "paper params (M)": 1, "ours weights (M)": 3})
    return [t1, t2, t47]


_ARCH_FIELDS = ("width_mult", "resolution", "conv_type", "shallow", "stem_stride", "in_chans", "min_channels")


def compare_table(profile: ModelProfile) -> Table:
    """Published numbers for the profiled architecture (same width, resolution, body), each beside our
    count under that source's convention (its preset, classes and parameter sum), and whether they match."""
    from .published import PAPER, PAPER_MODELS, SLIM, SLIM_V1
    from .zoo import variant_name

    arch = {k: profile.config.get(k) for k in _ARCH_FIELDS}
    rows: list[list[Any]] = []
    notes: list[str] = []

    def ours(convention: str) -> ModelProfile:
        conv = CONVENTIONS[convention]
        return profile_config({**profile.config, **conv.overrides}, name=profile.name)

    grouped: dict[tuple[float, float, float], list[Any]] = {}
    for pm in PAPER_MODELS:
        cfg = MobileNetConfig(**pm.overrides).to_dict()
        if {k: cfg[k] for k in _ARCH_FIELDS} == arch:
            g = grouped.setdefault((pm.mult_adds_m, pm.params_m, pm.top1), [[], pm])
            g[0].append(pm.table)
    if grouped:
        mine = ours("paper")
        for tables, pm in grouped.values():
            ok = _rounds_to(mine.macs / 1e6, pm.mult_adds_m, 0) and _rounds_to(mine.count("weights") / 1e6,
                                                                              pm.params_m, 1)
            rows.append([f"paper {', '.join(tables)}", pm.name, pm.mult_adds_m, _m(mine.macs), pm.params_m,
                         _m(mine.count("weights"), 3), "yes" if ok else "no", pm.top1])
            if pm.note:
                notes.append(f"paper {pm.name}: {pm.note}")
    name = variant_name(arch["width_mult"], arch["resolution"]) if arch["width_mult"] else ""
    default_body = MobileNetConfig(width_mult=arch["width_mult"], resolution=arch["resolution"]).to_dict()
    if name in SLIM_V1 and {k: default_body[k] for k in _ARCH_FIELDS} == arch:
        pub, mine = SLIM_V1[name], ours("slim")
        ok = _rounds_to(mine.macs / 1e6, pub.macs_m, 0) and _rounds_to(mine.count("slim") / 1e6, pub.params_m, 2)
        rows.append(["TF-slim", name, pub.macs_m, _m(mine.macs), pub.params_m, _m(mine.count("slim"), 3),
                     "yes" if ok else "no", pub.top1])
        if pub.note:
            notes.append(f"TF-slim {name}: {pub.note}")
    if not rows:
        notes.append("no published row has this architecture")
    notes += [f"paper: {PAPER}; convention: {CONVENTIONS['paper'].description}",
              f"TF-slim: {SLIM}; convention: {CONVENTIONS['slim'].description}"]
    return Table(["source", "model", "published MACs (M)", "ours MACs (M)", "published params (M)",
                  "ours params (M)", "match", "top-1 %"], rows, caption=f"{profile.name}: published vs ours",
                 notes=notes, digits={"published MACs (M)": 0, "ours params (M)": 3, "top-1 %": 1})
