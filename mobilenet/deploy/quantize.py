"""int8 quantization for the x86 CPU: post-training static (PTQ) and quantization-aware training (QAT).

Which path, and why (measured on this project's shared 2-core AMD EPYC with AVX-512 VNNI, torch 2.13,
onnxruntime 1.32, batch 1, 1 thread, variants interleaved in one run; re-measure with ``mobilenet bench``):

* ONNX Runtime static quantization (QDQ, per-channel int8 weights, uint8 activations), see
  :func:`quantize_onnx`: the fastest int8 path, 4.75x eager fp32 on ``mobilenet_v1_100_224``
  (5.1 vs 24.2 ms) and 8.7x on the small TF Lite 0.25-128 model (0.40 vs 3.50 ms).
* ``torch.ao.quantization`` FX graph mode with the ``x86`` engine (fbgemm/oneDNN int8 kernels):
  3.8x eager fp32 on ``mobilenet_v1_100_224`` (6.3 ms), but only 1.15x on the 0.25-128 model, where
  per-op overhead dominates. It runs in PyTorch with no extra dependency; it is :func:`quantize_ptq`.
* PT2E (``torch.export`` + ``torchao``'s ``X86InductorQuantizer`` + ``torch.compile``) took 12 ms
  against 15 ms for eager fp32 on ``mobilenet_v1_100_224`` and a minute to compile, so it is not used.

Accuracy on the imported TF Lite 0.25-128 model (``mobilenet_v1_0.25_128_quant.tflite``), 100 ImageNet
photos (one per class; calibrated on the same photos), float 44% top-1; Google's own uint8 TF Lite
run of the file gets 45% (94% top-1 agreement with our float model):

=====================================================  ==============  ================
path                                                   int8 top-1      agreement/float
=====================================================  ==============  ================
ONNX Runtime, calibrated ranges (before)               41%             82%
ONNX Runtime, the file's recorded grids (default)      45%             94%
torch x86, calibrated ranges (before)                  39%             70%
torch x86, calibrated + depthwise kept within +-64     40%             75%
torch x86, the file's recorded grids (default)         46%             89%
=====================================================  ==============  ================

That model was quantization-aware trained: the importer records the grids it was trained on
(activation ranges, weight scales/zero points; :func:`recorded_grids`) and both paths reuse them,
so the input, every ReLU6 output and the weights land on exactly TF Lite's grid (the weights are
re-quantized losslessly). The torch path still differs in depthwise kernels, whose int8 values
must stay within +-64 (``DEPTHWISE_WEIGHT_LIMIT``: fbgemm sums pairs in int16). The ONNX file with
the file's asymmetric int8 weights took 0.48 ms against 0.38 ms with calibrated symmetric weights
(same machine, interleaved); zero-point-free weights on the file's scale, where a channel fits
(all but 1-4 channels per layer), kept 45% top-1 but 90% agreement, so the exact grid is the default.
Models without recorded grids (trained here) use calibration; QAT (:func:`quantize_qat`) is the way
to recover more there.

The quantized model is a ``torch.fx.GraphModule`` over :class:`~mobilenet.deploy.static.StaticMobileNet`
(fixed input size, frozen SAME padding). :func:`save_quantized` writes it as TorchScript with the
model's metadata inside, since safetensors cannot hold packed int8 weights.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..checkpoint import atomic_write
from ..model import MobileNetV1
from ..runtimes.pytorch import METADATA_FILE  # the TorchScript extra file holding config, class names, preprocessing
from ..weights import weights_info
from .static import static_model

ENGINES = ("x86", "fbgemm", "onednn")


@contextmanager
def quantized_engine(engine: str) -> Iterator[None]:
    """Select the int8 kernel library (``torch.backends.quantized.engine``) for the duration of a block."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine not in torch.backends.quantized.supported_engines:
        raise ValueError(f"quantized engine {engine!r} is not in this torch build "
                         f"(available: {torch.backends.quantized.supported_engines})")
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


@contextmanager
def _quiet_deprecations() -> Iterator[None]:
    # torch.ao.quantization warns on every call that it will move to torchao; the FX path still is the
    # fastest int8 path on the CPU in torch 2.13 (module docstring), so the warning is noise here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*")
        warnings.filterwarnings("ignore", message=".*_empty_affine_quantized.*")
        warnings.filterwarnings("ignore", message=".*reduce_range.*")
        yield


def _batches(calibration: torch.Tensor | Iterable[torch.Tensor], batch_size: int) -> list[torch.Tensor]:
    if isinstance(calibration, torch.Tensor):
        if calibration.ndim != 4:
            raise ValueError(f"calibration images must be (N, C, H, W), got shape {tuple(calibration.shape)}")
        return list(calibration.split(batch_size))
    batches = [b[0] if isinstance(b, (tuple, list)) else b for b in calibration]
    if not batches:
        raise ValueError("no calibration images")
    return batches


def _input_size(model: MobileNetV1, calibration: list[torch.Tensor]) -> tuple[int, int]:
    size = tuple(calibration[0].shape[-2:])
    for b in calibration:
        if tuple(b.shape[-2:]) != size or b.shape[1] != model.config.in_chans:
            raise ValueError(f"calibration batches must all be (B, {model.config.in_chans}, {size[0]}, {size[1]}), "
                             f"got {tuple(b.shape)}")
    return int(size[0]), int(size[1])


def has_vnni() -> bool:
    """Whether this x86 CPU has VNNI int8 dot products (AVX512-VNNI or AVX-VNNI), read from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return " avx512_vnni" in flags or " avx_vnni" in flags


OBSERVERS = ("histogram", "minmax")


def _qconfig_mapping(engine: str, *, qat: bool, reduce_range: bool | None = None,
                     observer: str = "minmax") -> Any:
    from torch.ao.quantization import QConfig, get_default_qat_qconfig_mapping, get_default_qconfig_mapping
    from torch.ao.quantization.observer import HistogramObserver, MinMaxObserver, PerChannelMinMaxObserver

    # Defaults for x86: per-channel symmetric int8 weights, uint8 activations (histogram observer for
    # PTQ, moving-average min/max with fake quantization for QAT).
    if qat:
        return get_default_qat_qconfig_mapping(engine)
    mapping = get_default_qconfig_mapping(engine)
    # torch reduces activations to 7 bits on x86, which only CPUs without VNNI need (their u8 x s8
    # dot product can saturate); on VNNI CPUs full 8-bit ranges keep more accuracy.
    if reduce_range is None:
        reduce_range = not has_vnni()
    if observer not in OBSERVERS:
        raise ValueError(f"observer must be one of {OBSERVERS}, got {observer!r}")
    # histogram: searches the clipping range minimising quantization error (better accuracy, but its
    # search takes seconds per model at conversion); minmax: the observed range, instant.
    act = HistogramObserver if observer == "histogram" else MinMaxObserver
    return mapping.set_global(QConfig(
        activation=act.with_args(reduce_range=reduce_range),
        weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)))


def _relu6_to_relu(model: nn.Module) -> set[str]:
    """Replace every ``conv_bn_act`` ReLU6 by ReLU (in place); returns the names of the convs they follow.

    x86 int8 kernels fuse conv+BN+ReLU but not ReLU6: an unfused ReLU6 leaves the conv output
    quantized over its whole pre-activation range (e.g. [-30, 20]), of which [0, 6] then gets a few
    dozen of the 256 levels (measured: -10 points top-1 on the imported TF Lite 0.25 model). With
    ReLU and the fused output's range capped at 6 (:func:`_cap_relu6_ranges`), the saturation of
    uint8 at the top of the range *is* the clamp at 6, as in TF Lite.
    """
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Sequential) and isinstance(getattr(module, "act", None), nn.ReLU6) \
                and isinstance(getattr(module, "conv", None), nn.Conv2d):
            module.act = nn.ReLU(inplace=False).train(module.training)
            names.add(f"{name}.conv" if name else "conv")
    return names


def _output_observers(prepared: torch.fx.GraphModule, conv_names: set[str]) -> list[tuple[str, Any]]:
    """(name, observer) of every observer module placed right after one of the named convs."""
    found = []
    for node in prepared.graph.nodes:
        if node.op != "call_module" or not node.args or not hasattr(node.args[0], "target"):
            continue
        source = node.args[0]
        observer = getattr(prepared, str(node.target), None)
        if source.op == "call_module" and source.target in conv_names and hasattr(observer, "calculate_qparams"):
            found.append((str(node.target), observer))
    return found


def _cap_relu6_ranges(prepared: torch.fx.GraphModule, conv_names: set[str]) -> int:
    """After calibration: observers on the outputs of former ReLU6 convs get the range [0, min(found, 6)]."""
    from torch.ao.quantization.observer import MinMaxObserver

    capped = 0
    for name, observer in _output_observers(prepared, conv_names):
        scale, zero_point = observer.calculate_qparams()
        upper = float(scale) * (observer.quant_max - int(zero_point))  # top of the range the observer chose
        fixed = MinMaxObserver(dtype=observer.dtype, qscheme=observer.qscheme, reduce_range=observer.reduce_range,
                               quant_min=observer.quant_min, quant_max=observer.quant_max)
        fixed.min_val = torch.tensor(0.0)
        fixed.max_val = torch.tensor(min(upper, 6.0))
        setattr(prepared, name, fixed)
        capped += 1
    return capped


def recorded_grids(model: nn.Module) -> tuple[dict[str, tuple[float, float]], dict[str, dict[str, Any]]]:
    """(activation ranges, weight grids) an importer recorded in ``model.weights_info.quantization``.

    A quantization-aware trained import (e.g. a uint8 ``.tflite``, see :mod:`mobilenet.tflite.classifier`)
    carries the grids its activations were trained on (as ranges: ``input``, ``stem``, ``blocks.{i}.dw|pw``,
    ``classifier`` -> [min, max]) and the grids its weights live on (state-dict name ->
    scale/zero_point/quant_min/quant_max/axis). Empty dicts when the model has none.
    """
    q = weights_info(model).quantization
    if q is None:
        return {}, {}
    ranges = q.activation_ranges()
    for name, (lo, hi) in ranges.items():
        if not lo <= 0 <= hi or lo == hi:
            raise ValueError(f"recorded activation range of {name!r} is [{lo}, {hi}]: it must contain 0 and not be "
                             "empty (quantized zero must be exact)")
    return ranges, {k: g.to_dict() for k, g in q.weights.items()}


def _observer_range_name(prepared: torch.fx.GraphModule, node: torch.fx.Node) -> str | None:
    """The ``activation_ranges`` key for an observer node, from the tensor it observes (None: no such key).

    The placeholder is ``input``; a fused conv-bn-act ``blocks.3.pw.conv`` is ``blocks.3.pw``; the
    classifier is ``classifier``. Padding (the tf preset's frozen SAME pads, which torch runs in
    float between a dequantize and a quantize) keeps the range of what it pads, so the requantization
    after it lands on the same grid and is exact.
    """
    source = node.args[0] if node.args else None
    while isinstance(source, torch.fx.Node) and source.op == "call_module" and source.args and (
            str(source.target).startswith("activation_post_process")
            or isinstance(prepared.get_submodule(str(source.target)), nn.ZeroPad2d)):
        source = source.args[0]
    if not isinstance(source, torch.fx.Node):
        return None
    if source.op == "placeholder":
        return "input"
    if source.op != "call_module":
        return None
    target = str(source.target)
    return target[: -len(".conv")] if target.endswith(".conv") else target


def _fix_recorded_ranges(prepared: torch.fx.GraphModule, ranges: dict[str, tuple[float, float]]) -> set[str]:
    """After calibration: observers of tensors with a recorded range get exactly that range.

    The range [min, max] becomes scale (max - min) / 255 and zero point -min / scale, the grid the
    source model ran on (for TF Lite's QAT models: 6/255 for every ReLU6 output, 1/128 with zero
    point 128 for the input, so quantizing the input is exact). Returns the keys that were applied.
    """
    from torch.ao.quantization.observer import MinMaxObserver

    applied = set()
    for node in prepared.graph.nodes:
        if node.op != "call_module":
            continue
        observer = getattr(prepared, str(node.target), None)
        if not str(node.target).startswith("activation_post_process") or not hasattr(observer, "calculate_qparams"):
            continue
        key = _observer_range_name(prepared, node)
        if key is None or key not in ranges:
            continue
        lo, hi = ranges[key]
        fixed = MinMaxObserver(dtype=observer.dtype, qscheme=torch.per_tensor_affine,
                               reduce_range=getattr(observer, "reduce_range", False),
                               quant_min=observer.quant_min, quant_max=observer.quant_max)
        fixed.min_val = torch.tensor(lo)
        fixed.max_val = torch.tensor(hi)
        setattr(prepared, str(node.target), fixed)
        applied.add(key)
    return applied


class FixedWeightQParams(nn.Module):
    """A weight "observer" that observes nothing and returns given qparams (torch's observer protocol).

    Used so that weights already on an int8/uint8 grid (a quantization-aware trained import) are
    quantized on *that* grid, which is lossless, rather than on a new per-channel symmetric one,
    which rounds them a second time. ``scale``/``zero_point``: one value (per tensor) or one per
    output channel (axis 0); ``zero_point`` is in torch's qint8 range [-128, 127].
    """

    def __init__(self, scale: list[float], zero_point: list[int], dtype: torch.dtype = torch.qint8) -> None:
        super().__init__()
        if len(scale) != len(zero_point) or not scale:
            raise ValueError(f"scale and zero_point must be non-empty and of equal length, got {len(scale)} "
                             f"and {len(zero_point)}")
        self.dtype = dtype
        self.quant_min, self.quant_max = -128, 127
        self.ch_axis = 0
        self.qscheme = torch.per_tensor_affine if len(scale) == 1 else torch.per_channel_affine
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))
        self.register_buffer("zero_point", torch.tensor(zero_point, dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scale, self.zero_point


# fbgemm's depthwise kernels multiply uint8 activations by int8 weights in pairs summed in int16
# (vpmaddubsw), which saturates above 32767: with full-range activations (up to 255) the raw int8
# weights must stay within +-64 (2 * 255 * 64 = 32640). Measured on the TF Lite 0.25 import: full
# int8 depthwise weights gave errors of up to 38 output steps in blocks 6-10 (38% of top-1 agreement lost).
DEPTHWISE_WEIGHT_LIMIT = 64


def _is_depthwise(module: nn.Module) -> bool:
    conv = module[0] if isinstance(module, nn.Sequential) and len(module) else module
    return isinstance(conv, nn.Conv2d) and conv.groups > 1 and conv.groups == conv.in_channels


def _conv_weight(module: nn.Module) -> torch.Tensor:
    conv = module[0] if isinstance(module, nn.Sequential) and len(module) else module
    return conv.weight.detach()


def _depthwise_scales(weight: torch.Tensor, grid_scale: float | None) -> list[float]:
    """Per-channel symmetric scales keeping ``|q| <= DEPTHWISE_WEIGHT_LIMIT`` for a ``(C, 1, kh, kw)`` weight.

    A channel whose values are multiples of ``grid_scale`` needing at most the limit of levels keeps
    that scale (lossless); others get ``max|w| / (limit - 1)``.
    """
    peak = weight.abs().flatten(1).amax(1).double()  # (C,)
    scales = []
    for p in peak.tolist():
        if grid_scale is not None and round(p / grid_scale) <= DEPTHWISE_WEIGHT_LIMIT:
            scales.append(grid_scale)
        else:
            scales.append(max(p / (DEPTHWISE_WEIGHT_LIMIT - 1), 1e-8))  # all-zero channel: any scale is exact
    return scales


def _guard_depthwise(prepared: torch.fx.GraphModule, done: set[str]) -> int:
    """Depthwise convs not in ``done`` get 7-bit per-channel symmetric weights (see DEPTHWISE_WEIGHT_LIMIT)."""
    from torch.ao.quantization import QConfig

    guarded = 0
    for name, module in prepared.named_modules():
        qconfig = getattr(module, "qconfig", None)
        if name in done or qconfig is None or not _is_depthwise(module):
            continue
        scales = _depthwise_scales(_conv_weight(module), None)
        module.qconfig = QConfig(activation=qconfig.activation, weight=functools.partial(
            FixedWeightQParams, scale=scales, zero_point=[0] * len(scales)))
        guarded += 1
    return guarded


def prepared_reduce_range(prepared: torch.fx.GraphModule) -> bool:
    """Whether the activation observers of a prepared model use 7-bit ranges (then int16 cannot saturate)."""
    return any(getattr(m, "reduce_range", False) for n, m in prepared.named_modules()
               if n.startswith("activation_post_process"))


def _fix_weight_grids(prepared: torch.fx.GraphModule, grids: dict[str, dict[str, Any]]) -> set[str]:
    """Give each conv whose weight has a recorded grid a weight observer returning that grid.

    A uint8 grid (quant range [0, 255], zero point z) is the same grid in int8 with zero point
    z - 128, so quantizing the (dequantized) weights again is lossless. Depthwise convs are the
    exception: their raw int8 values must stay within +-64 (see DEPTHWISE_WEIGHT_LIMIT), so they get
    zero-point-free per-channel scales, on the recorded grid where a channel fits in 64 levels.
    Grids that do not fit int8 are left to the default observer. Returns the names of the modules
    (``blocks.0.dw.conv``) that were given a grid.
    """
    from torch.ao.quantization import QConfig

    applied = set()
    for name, grid in grids.items():
        module_name = name[: -len(".weight")] if name.endswith(".weight") else name
        try:
            module = prepared.get_submodule(module_name)
        except AttributeError:
            continue
        qconfig = getattr(module, "qconfig", None)
        qmin, qmax = int(grid.get("quant_min", -128)), int(grid.get("quant_max", 127))
        if qconfig is None or qmax - qmin > 255 or int(grid.get("axis", 0)) != 0:
            continue
        scale = [float(v) for v in grid["scale"]]
        if _is_depthwise(module):
            weight = _conv_weight(module)
            if len(scale) == 1:
                scales = _depthwise_scales(weight, scale[0])
            else:  # per-channel grid: each channel keeps its own scale where it fits
                scales = [_depthwise_scales(weight[c : c + 1], s)[0] for c, s in enumerate(scale)]
            observer = functools.partial(FixedWeightQParams, scale=scales, zero_point=[0] * len(scales))
        else:
            shift = -128 - qmin  # uint8 [0, 255] -> int8 [-128, 127]
            zero_point = [int(z) + shift for z in grid["zero_point"]]
            observer = functools.partial(FixedWeightQParams, scale=scale, zero_point=zero_point)
        module.qconfig = QConfig(activation=qconfig.activation, weight=observer)
        applied.add(module_name)
    return applied


def _fix_relu6_fake_quant(prepared: torch.fx.GraphModule, conv_names: set[str]) -> int:
    """QAT: outputs of former ReLU6 convs get a fixed [0, 6] uint8 fake quantizer (scale 6/255).

    Fake-quantizing a ReLU output to [0, 6] clamps it at 6, so training sees exactly ReLU6 plus
    quantization noise, and the converted model keeps that range (TF Lite's scheme).
    """
    from torch.ao.quantization.fake_quantize import FixedQParamsFakeQuantize
    from torch.ao.quantization.observer import FixedQParamsObserver

    observer = FixedQParamsObserver.with_args(scale=6.0 / 255, zero_point=0, dtype=torch.quint8, quant_min=0,
                                              quant_max=255)
    found = _output_observers(prepared, conv_names)
    for name, _ in found:
        setattr(prepared, name, FixedQParamsFakeQuantize(observer=observer))
    return len(found)


def quantize_ptq(
    model: MobileNetV1,
    calibration: torch.Tensor | Iterable[torch.Tensor],
    *,
    engine: str = "x86",
    reduce_range: bool | None = None,
    observer: str = "minmax",
    use_recorded: bool = True,
    batch_size: int = 16,
    progress: bool = False,
) -> torch.fx.GraphModule:
    """Post-training static int8 quantization of ``model`` calibrated on ``calibration`` images.

    ``calibration``: a ``(N, C, H, W)`` tensor of preprocessed images (or an iterable of batches);
    its H x W is the input size the quantized model is built for. The float model is not changed.
    ``reduce_range``: 7-bit activations (default: only on CPUs without VNNI, see :func:`has_vnni`).
    ``observer``: activation range estimation, ``"minmax"`` (default: instant, and on the imported TF Lite
    0.25 model, calibrated, it kept 39% top-1 of the float 44% on 100 ImageNet photos where ``"histogram"``
    kept 35%; measured before the depthwise guard).
    ReLU6 outputs get the range [0, 6] either way (see :func:`_relu6_to_relu`).
    ``use_recorded``: when the model carries the activation ranges and weight grids of a
    quantization-aware trained source (:func:`recorded_grids`), use them instead of the calibrated
    ranges and the per-channel symmetric weight grid (measured on the TF Lite 0.25-128 import: see
    the module docstring).
    Returns a module ``(B, C, H, W) float -> (B, num_classes) float`` running int8 kernels inside.
    """
    if not isinstance(model, MobileNetV1):
        raise TypeError(f"quantize_ptq expects a MobileNetV1, got {type(model).__name__}")
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    batches = _batches(calibration, batch_size)
    size = _input_size(model, batches)
    float_static = static_model(model, size)
    relu6_convs = _relu6_to_relu(float_static)
    with quantized_engine(engine), _quiet_deprecations():
        mapping = _qconfig_mapping(engine, qat=False, reduce_range=reduce_range, observer=observer)
        prepared = prepare_fx(float_static, mapping, (batches[0][:1],))
        with torch.no_grad():
            for x in tqdm(batches, desc="calibrating", disable=not progress, leave=False):
                prepared(x)
        if relu6_convs and _cap_relu6_ranges(prepared, relu6_convs) != len(relu6_convs):
            raise RuntimeError("internal: not every ReLU6 conv output had an observer to cap")
        gridded: set[str] = set()
        if use_recorded:
            ranges, grids = recorded_grids(model)
            _fix_recorded_ranges(prepared, ranges)  # after the cap: a recorded range wins
            gridded = _fix_weight_grids(prepared, grids)
        if not prepared_reduce_range(prepared):
            _guard_depthwise(prepared, gridded)
        quantized = convert_fx(prepared)
    quantized.quantized_engine = engine  # type: ignore[assignment]
    return quantized


def quantize_qat(
    model: MobileNetV1,
    train_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    *,
    epochs: int,
    lr: float = 1e-4,
    freeze_bn_after: int = 0,
    freeze_observers_after: int | None = None,
    engine: str = "x86",
    progress: bool = False,
) -> torch.fx.GraphModule:
    """Quantization-aware fine-tuning: fake-quantized training for ``epochs`` epochs, then int8 conversion.

    ``train_batches()`` yields ``(images, labels)`` for one epoch (called once per epoch); labels are
    indices of the model's outputs. Adam at ``lr`` with cosine decay per epoch.

    Recipe for fine-tuning a trained model: BatchNorm statistics frozen from the start
    (``freeze_bn_after=0``: they are already right, and small-batch statistics would move them), and
    observers frozen for the last epoch (``freeze_observers_after``, default ``epochs - 1``) so the
    final epoch trains against the scales that will be used. (SGD at 1e-3 diverged in our test on a
    small digits model, where Adam at 1e-4 gained accuracy.) The float model is not changed.
    """
    if not isinstance(model, MobileNetV1):
        raise TypeError(f"quantize_qat expects a MobileNetV1, got {type(model).__name__}")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    from torch.ao.nn.intrinsic.qat import freeze_bn_stats
    from torch.ao.quantization import disable_observer
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_qat_fx

    freeze_observers_after = max(epochs - 1, 1) if freeze_observers_after is None else freeze_observers_after
    first = next(iter(train_batches()), None)
    if first is None:
        raise ValueError("no training batches for QAT")
    example = first[0][:1]
    float_static = static_model(model, tuple(example.shape[-2:]))
    relu6_convs = _relu6_to_relu(float_static)
    with quantized_engine(engine), _quiet_deprecations():
        prepared = prepare_qat_fx(float_static.train(), _qconfig_mapping(engine, qat=True), (example,))
        if relu6_convs and _fix_relu6_fake_quant(prepared, relu6_convs) != len(relu6_convs):
            raise RuntimeError("internal: not every ReLU6 conv output had a fake quantizer to fix")
        opt = torch.optim.Adam([p for p in prepared.parameters() if p.requires_grad], lr=lr)
        for epoch in range(epochs):
            prepared.train()
            if epoch >= freeze_bn_after:
                prepared.apply(freeze_bn_stats)
            if epoch >= freeze_observers_after:
                prepared.apply(disable_observer)
            for group in opt.param_groups:  # cosine decay per epoch
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
            for x, y in tqdm(train_batches(), desc=f"QAT epoch {epoch + 1}/{epochs}", disable=not progress,
                             leave=False):
                loss = F.cross_entropy(prepared(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        prepared.eval()
        quantized = convert_fx(prepared)
    quantized.quantized_engine = engine  # type: ignore[assignment]
    return quantized


def model_metadata(model: nn.Module) -> dict[str, Any]:
    """What travels with a deployed file: :func:`mobilenet.export.metadata.artifact_metadata` of ``model``."""
    from ..export.metadata import artifact_metadata

    return artifact_metadata(model)
    """What travels with a deployed file: config, class names and preprocessing of the source model."""
    config = getattr(model, "config", None)
    info = weights_info(model)
    pre = info.preprocessing
    if pre is None and config is not None:
        from ..preprocessing import Preprocessing

        pre = Preprocessing.imagenet(config.resolution)
    return {
        "architecture": "mobilenet_v1_folded" if getattr(model, "bn_folded", False) else "mobilenet_v1",
        "config": config.to_dict() if config is not None else None,
        "class_names": info.classes,
        "preprocessing": pre.to_dict() if pre is not None else None,
    }


def save_quantized(
    quantized: nn.Module, path: str | os.PathLike[str], example: torch.Tensor, *, metadata: dict[str, Any]
) -> Path:
    """Write an int8 model as TorchScript (``torch.jit.load`` runs it without this package).

    ``metadata`` (see :func:`model_metadata`) is stored in the archive as ``mobilenet.json``.
    ``example``: one input batch of the size the model was quantized for (traced with it).
    """
    engine = getattr(quantized, "quantized_engine", "x86")
    meta = {**metadata, "quantization": {"dtype": "int8", "engine": engine, "input_size": list(example.shape[-2:])}}
    with quantized_engine(engine), _quiet_deprecations(), torch.no_grad():
        traced = torch.jit.trace(quantized, example)
        buf = io.BytesIO()
        torch.jit.save(traced, buf, _extra_files={METADATA_FILE: json.dumps(meta)})
    path = Path(path)
    with atomic_write(path) as f:
        f.write(buf.getvalue())
    return path


def load_quantized(path: str | os.PathLike[str]) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """(TorchScript int8 model, metadata) from :func:`save_quantized`; sets the engine it was built for."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"quantized model not found: {path}")
    extra = {METADATA_FILE: ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except RuntimeError as e:
        raise ValueError(f"{path} is not a TorchScript file ({str(e).splitlines()[0]})") from None
    meta = json.loads(extra[METADATA_FILE]) if extra[METADATA_FILE] else {}
    engine = meta.get("quantization", {}).get("engine")
    if engine in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = engine
    return module.eval(), meta


# ONNX ops that pass their input's grid through unchanged (TF Lite keeps the scale across them too).
_ONNX_SAME_GRID = ("Clip", "Relu", "Pad", "GlobalAveragePool", "AveragePool", "ReduceMean", "Flatten", "Reshape",
                   "Squeeze", "Unsqueeze", "Identity")


def _uint8_grid(lo: float, hi: float) -> tuple[float, int]:
    scale = (hi - lo) / 255.0
    return scale, int(round(-lo / scale))


def onnx_overrides(model: Any, activation_ranges: dict[str, tuple[float, float]],
                   weight_grids: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """ONNX Runtime ``TensorQuantOverrides`` that put a float MobileNet ONNX graph on recorded grids.

    ``model``: the float graph from :func:`~mobilenet.export.onnx.export_onnx` (conv weights are
    initializers named like our state dict, ``blocks.3.pw.conv.weight``, BN folded). The graph input
    gets ``activation_ranges["input"]``; each conv's output gets its unit's range and passes it
    through the ops in ``_ONNX_SAME_GRID`` (Clip, Pad, pooling, reshapes); conv weights with a
    recorded grid get it (uint8 [0, 255] zero point z -> int8 zero point z - 128: the same grid).
    """
    import numpy as np
    from onnxruntime.quantization import QuantType

    grid_of: dict[str, tuple[float, float]] = {}
    if "input" in activation_ranges and len(model.graph.input):
        grid_of[model.graph.input[0].name] = activation_ranges["input"]
    overrides: dict[str, list[dict[str, Any]]] = {}
    for node in model.graph.node:
        if node.op_type == "Conv" and len(node.input) > 1:
            weight = node.input[1]
            unit = weight[: -len(".weight")] if weight.endswith(".weight") else weight
            unit = unit[: -len(".conv")] if unit.endswith(".conv") else unit
            if unit in activation_ranges:
                grid_of[node.output[0]] = activation_ranges[unit]
            grid = weight_grids.get(weight)
            if grid is not None and len(grid["scale"]) == 1 and int(grid.get("quant_max", 127)) - \
                    int(grid.get("quant_min", -128)) <= 255:
                shift = -128 - int(grid.get("quant_min", -128))
                overrides[weight] = [{"quant_type": QuantType.QInt8, "scale": np.array(grid["scale"][0], np.float32),
                                      "zero_point": np.array(int(grid["zero_point"][0]) + shift, np.int8)}]
            elif grid is not None:  # per-channel grid (axis 0 of the OIHW weight)
                overrides[weight] = [{"quant_type": QuantType.QInt8, "axis": 0, "scale": np.array(sc, np.float32),
                                      "zero_point": np.array(int(z) - 128 - int(grid.get("quant_min", -128)), np.int8)}
                                     for sc, z in zip(grid["scale"], grid["zero_point"], strict=True)]
        elif node.op_type in _ONNX_SAME_GRID and node.input and node.input[0] in grid_of:
            grid_of[node.output[0]] = grid_of[node.input[0]]
    for tensor, (lo, hi) in grid_of.items():
        scale, zero_point = _uint8_grid(lo, hi)
        overrides[tensor] = [{"quant_type": QuantType.QUInt8, "scale": np.array(scale, np.float32),
                              "zero_point": np.array(zero_point, np.uint8)}]
    return overrides


def quantize_onnx(
    float_onnx: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    calibration: torch.Tensor,
    *,
    per_channel: bool = True,
    activation_ranges: dict[str, tuple[float, float]] | None = None,
    weight_grids: dict[str, dict[str, Any]] | None = None,
    op_types: list[str] | None = None,
) -> Path:
    """ONNX Runtime static int8 quantization (QDQ format) of a float ONNX file from :func:`export_onnx`.

    Per-channel symmetric int8 weights, uint8 activations calibrated (min/max) on ``calibration``
    ``(N, C, H, W)``. The metadata_props of the float file are carried over.
    ``activation_ranges``/``weight_grids`` (from :func:`recorded_grids`): the grids of a
    quantization-aware trained source, given to ONNX Runtime as tensor overrides in place of the
    calibrated ranges and the per-channel weight grid (see :func:`onnx_overrides`).
    ``op_types``: quantize only these ONNX op types (default: every op ONNX Runtime can quantize).
    """
    try:
        import onnx
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:
        raise ImportError(f"int8 ONNX needs onnx and onnxruntime: pip install 'mobilenet[export]' ({e})") from None
    import tempfile

    float_onnx, out_path = Path(float_onnx), Path(out_path)
    src = onnx.load(str(float_onnx))
    input_name = src.graph.input[0].name
    props = {p.key: p.value for p in src.metadata_props}

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calibration.split(1))

        def get_next(self) -> dict[str, Any] | None:
            x = next(self._it, None)
            return None if x is None else {input_name: x.numpy()}

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(float_onnx), str(pre), skip_symbolic_shape=True)
        q = Path(tmp) / "q.onnx"
        overrides = onnx_overrides(onnx.load(str(pre)), activation_ranges or {}, weight_grids or {})
        quantize_static(str(pre), str(q), _Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=op_types,
                        extra_options={"TensorQuantOverrides": overrides} if overrides else None)
        model = onnx.load(str(q))
    del model.metadata_props[:]
    for k, v in {**props, "quantization": json.dumps({"dtype": "int8", "format": "QDQ"})}.items():
        model.metadata_props.add(key=k, value=v)
    with atomic_write(out_path) as f:
        f.write(model.SerializeToString())
    return out_path

