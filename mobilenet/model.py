"""MobileNet v1 (Howard et al. 2017, arXiv:1704.04861), built from the paper's Table 1.

Two presets share one architecture and one state-dict layout:

* ``"paper"``: ReLU, symmetric zero padding, BatchNorm eps 1e-5, a linear classifier.
* ``"tf"``: what TF-slim and Keras Applications trained, so their weights load unchanged:
  ReLU6, TF "SAME" padding (asymmetric for stride 2: one extra row/column at the bottom/right
  of an even-sized input), BatchNorm eps 1e-3, dropout then a 1x1 convolution with bias as the
  classifier (slim's ``Conv2d_1c_1x1``, Keras' ``conv_preds``).
* ``"timm"``: timm's ``mobilenetv1_100``: ReLU6, symmetric padding, BatchNorm eps 1e-5, a linear
  classifier.

Channel rounding follows TF-slim (``max(int(c * width_mult), 8)``), which is also Keras'
``int(c * alpha)`` for every alpha Keras publishes. The paper's baselines are options:
``conv_type="full"`` (Table 4's "Conv MobileNet") and ``shallow=True`` (Table 5).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

# Table 1 of the paper as data: the 13 depthwise separable blocks, (out_channels, stride).
# The stem (a full 3x3 conv, 32 channels, stride 2) comes before them.
STEM_CHANNELS = 32
STEM_STRIDE = 2
LAYERS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
# Table 5's shallow MobileNet drops the five 14x14x512 stride-1 blocks (rows 6..10 above).
SHALLOW_DROPPED = frozenset(range(6, 11))
MIN_RESOLUTION = 32

Preset = Literal["paper", "tf", "timm"]
ConvType = Literal["separable", "full"]
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"act": nn.ReLU, "same_padding": False, "bn_eps": 1e-5, "conv_head": False, "dropout": 0.0},
    "tf": {"act": nn.ReLU6, "same_padding": True, "bn_eps": 1e-3, "conv_head": True, "dropout": 1e-3},
    "timm": {"act": nn.ReLU6, "same_padding": False, "bn_eps": 1e-5, "conv_head": False, "dropout": 0.0},
}


@dataclass(frozen=True)
class MobileNetConfig:
    """Everything needed to rebuild a MobileNetV1; saved beside every weights file.

    ``resolution`` is the input size the model is meant for (ρ = resolution / 224). It sets the
    profiler's input and the preprocessing that travels with weights; the network itself runs at
    any input size >= 32 px because it ends in global average pooling.
    """

    width_mult: float = 1.0
    resolution: int = 224
    num_classes: int = 1000
    dropout: float | None = None  # None: the preset's default (paper 0.0, tf 1e-3 as Keras)
    in_chans: int = 3
    preset: Preset = "paper"
    conv_type: ConvType = "separable"
    shallow: bool = False
    stem_stride: int = STEM_STRIDE
    min_channels: int = 8

    def __post_init__(self) -> None:
        _check(isinstance(self.width_mult, (int, float)) and self.width_mult > 0,
               f"width_mult must be > 0, got {self.width_mult!r}")
        _check(_is_int(self.resolution) and self.resolution >= MIN_RESOLUTION,
               f"resolution must be an integer >= {MIN_RESOLUTION}, got {self.resolution!r}")
        _check(_is_int(self.num_classes) and self.num_classes >= 0,
               f"num_classes must be an integer >= 0 (0: no classifier), got {self.num_classes!r}")
        _check(self.dropout is None or (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1),
               f"dropout must be in [0, 1), got {self.dropout!r}")
        _check(_is_int(self.in_chans) and self.in_chans >= 1,
               f"in_chans must be an integer >= 1, got {self.in_chans!r}")
        _check(self.preset in PRESETS, f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        _check(self.conv_type in ("separable", "full"),
               f"conv_type must be 'separable' or 'full', got {self.conv_type!r}")
        _check(isinstance(self.shallow, bool), f"shallow must be True or False, got {self.shallow!r}")
        _check(self.stem_stride in (1, 2), f"stem_stride must be 1 or 2, got {self.stem_stride!r}")
        _check(_is_int(self.min_channels) and self.min_channels >= 1,
               f"min_channels must be an integer >= 1, got {self.min_channels!r}")

    @property
    def resolved_dropout(self) -> float:
        return PRESETS[self.preset]["dropout"] if self.dropout is None else float(self.dropout)

    def channels(self, c: int) -> int:
        """Width-multiplied channel count: TF-slim's ``max(int(c * alpha), min_depth=8)``."""
        return max(int(c * self.width_mult), self.min_channels)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MobileNetConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        _check(not unknown, f"unknown MobileNetConfig field(s): {', '.join(unknown)}")
        return cls(**d)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


class SamePad2d(nn.Module):
    """TF "SAME" padding for a k x k kernel at stride s, computed from the input size.

    For an even input at stride 2 this pads (0, 1) on each axis, exactly Keras'
    ``ZeroPadding2D(((0, 1), (0, 1)))``; for odd inputs it pads like TF-slim (symmetrically).
    """

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def _pads(self, size: int) -> tuple[int, int]:
        total = max((math.ceil(size / self.stride) - 1) * self.stride + self.kernel_size - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = self._pads(x.shape[-2])
        left, right = self._pads(x.shape[-1])
        return F.pad(x, (left, right, top, bottom))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


def conv_bn_act(
    in_ch: int, out_ch: int, *, kernel_size: int, stride: int, groups: int = 1, cfg: MobileNetConfig
) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> activation as a plain Sequential (keys: conv, bn, act).

    Plain so that BN folding and quantization fusion see the usual (conv, bn, relu) triple.
    In the tf preset a parameter-free ``pad`` module comes first where padding is asymmetric.
    """
    preset = PRESETS[cfg.preset]
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if preset["same_padding"] and stride > 1:
        layers["pad"] = SamePad2d(kernel_size, stride)
        padding = 0
    else:
        padding = kernel_size // 2  # symmetric; equals SAME at stride 1 for odd kernels
    layers["conv"] = nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, groups=groups, bias=False)
    layers["bn"] = nn.BatchNorm2d(out_ch, eps=preset["bn_eps"])
    layers["act"] = preset["act"](inplace=True)
    return nn.Sequential(layers)


def is_depthwise(module: nn.Module) -> bool:
    """True for a depthwise conv (one filter per input channel), or a fused module (conv-BN-act) starting with one."""
    conv = module[0] if isinstance(module, nn.Sequential) and len(module) else module
    return isinstance(conv, nn.Conv2d) and conv.groups > 1 and conv.groups == conv.in_channels


class DepthwiseSeparable(nn.Sequential):
    """3x3 depthwise conv-BN-act (``dw``) then 1x1 pointwise conv-BN-act (``pw``): Fig. 3, right."""

    def __init__(self, in_ch: int, out_ch: int, *, stride: int, cfg: MobileNetConfig) -> None:
        super().__init__(OrderedDict(
            dw=conv_bn_act(in_ch, in_ch, kernel_size=3, stride=stride, groups=in_ch, cfg=cfg),
            pw=conv_bn_act(in_ch, out_ch, kernel_size=1, stride=1, cfg=cfg),
        ))


def block_specs(cfg: MobileNetConfig) -> list[tuple[int, int, int]]:
    """(in_channels, out_channels, stride) of every body block after width multiplication."""
    specs, in_ch = [], cfg.channels(STEM_CHANNELS)
    for i, (c, s) in enumerate(LAYERS):
        if cfg.shallow and i in SHALLOW_DROPPED:
            continue
        out_ch = cfg.channels(c)
        specs.append((in_ch, out_ch, s))
        in_ch = out_ch
    return specs


class MobileNetV1(nn.Module):
    """MobileNet v1 classifier.

    Modules: ``stem`` (full 3x3 conv-BN-act), ``blocks`` (13 depthwise separable blocks, 8 when
    shallow; full 3x3 convs when ``conv_type="full"``), global average pooling, ``dropout``,
    ``classifier`` (``nn.Linear`` in the paper preset, a 1x1 ``nn.Conv2d`` with bias in tf).
    """

    def __init__(
        self,
        *,
        width_mult: float = 1.0,
        resolution: int = 224,
        num_classes: int = 1000,
        dropout: float | None = None,
        in_chans: int = 3,
        preset: Preset = "paper",
        conv_type: ConvType = "separable",
        shallow: bool = False,
        stem_stride: int = STEM_STRIDE,
        min_channels: int = 8,
    ) -> None:
        super().__init__()
        cfg = MobileNetConfig(
            width_mult=width_mult, resolution=resolution, num_classes=num_classes, dropout=dropout,
            in_chans=in_chans, preset=preset, conv_type=conv_type, shallow=shallow,
            stem_stride=stem_stride, min_channels=min_channels,
        )
        self.config = cfg
        stem_ch = cfg.channels(STEM_CHANNELS)
        self.stem = conv_bn_act(in_chans, stem_ch, kernel_size=3, stride=cfg.stem_stride, cfg=cfg)

        blocks, info, reduction = [], [], cfg.stem_stride
        specs = block_specs(cfg)
        for i, (cin, cout, s) in enumerate(specs):
            if conv_type == "full":
                blocks.append(conv_bn_act(cin, cout, kernel_size=3, stride=s, cfg=cfg))
            else:
                blocks.append(DepthwiseSeparable(cin, cout, stride=s, cfg=cfg))
            reduction *= s
            last_at_stride = i + 1 == len(specs) or specs[i + 1][2] > 1
            if last_at_stride:
                info.append({"module": f"blocks.{i}", "num_chs": cout, "reduction": reduction})
        self.blocks = nn.Sequential(*blocks)
        # One entry per stage: the last block before each downsampling (timm's convention).
        self.feature_info: list[dict[str, Any]] = info
        self.num_features = specs[-1][1]
        self.dropout = nn.Dropout(cfg.resolved_dropout)
        self.classifier = self._make_classifier(num_classes)
        self._init_weights()

    @classmethod
    def from_config(cls, cfg: MobileNetConfig | dict[str, Any]) -> MobileNetV1:
        if isinstance(cfg, dict):
            cfg = MobileNetConfig.from_dict(cfg)
        return cls(**cfg.to_dict())

    def _make_classifier(self, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        if PRESETS[self.config.preset]["conv_head"]:
            return nn.Conv2d(self.num_features, num_classes, 1, bias=True)
        return nn.Linear(self.num_features, num_classes)

    def _init_weights(self) -> None:
        # TF-slim's mobilenet_v1_arg_scope: truncated normal, stddev 0.09 (cut at 2 sigma) for
        # every conv and the logits layer; zero biases; BN gamma 1, beta 0.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.09, a=-0.18, b=0.18)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one for ``num_classes`` (0: none)."""
        _check(_is_int(num_classes) and num_classes >= 0, f"num_classes must be an integer >= 0, got {num_classes!r}")
        self.config = MobileNetConfig.from_dict({**self.config.to_dict(), "num_classes": num_classes})
        device = next(self.parameters()).device
        self.classifier = self._make_classifier(num_classes).to(device)
        if isinstance(self.classifier, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(self.classifier.weight, std=0.09, a=-0.18, b=0.18)
            nn.init.zeros_(self.classifier.bias)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.config.in_chans:
            raise ValueError(f"expected input of shape (B, {self.config.in_chans}, H, W), got {tuple(x.shape)}")
        if min(x.shape[-2:]) < MIN_RESOLUTION:
            raise ValueError(f"input must be at least {MIN_RESOLUTION}x{MIN_RESOLUTION} px, got {tuple(x.shape[-2:])}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_features, H/32, W/32) last feature map (before pooling)."""
        self._check_input(x)
        return self.blocks(self.stem(x))

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps at every entry of ``feature_info`` (strides 2, 4, 8, 16, 32), for detection necks."""
        self._check_input(x)
        wanted = {int(f["module"].split(".")[1]) for f in self.feature_info}
        outs, x = [], self.stem(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in wanted:
                outs.append(x)
        return outs

    def forward_head(self, x: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        """(B, C, h, w) features -> (B, num_classes) logits, or (B, C) pooled features if ``pre_logits``."""
        x = x.mean((2, 3), keepdim=True)  # global average pooling: any input size works
        if pre_logits:
            return x.flatten(1)
        x = self.dropout(x)
        if isinstance(self.classifier, nn.Conv2d):
            return self.classifier(x).flatten(1)
        return self.classifier(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
