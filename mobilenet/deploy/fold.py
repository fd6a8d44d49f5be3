"""BatchNorm folding: ``conv -> bn -> act`` becomes ``conv(+bias) -> act`` with the same eval-mode output.

In eval mode BatchNorm is a per-channel affine map, ``y = (x - mean) / sqrt(var + eps) * gamma + beta``,
so it can be absorbed into the convolution before it: with ``s = gamma / sqrt(var + eps)``,
``W' = W * s`` (per output channel) and ``b' = beta + (b - mean) * s``. The fold is computed in
float64 and cast back, so the folded model matches the unfolded one to float32 rounding.

The module structure is kept (``conv``, ``act`` and, in the tf preset, ``pad`` stay where they were;
``bn`` becomes ``nn.Identity``), so quantization fusion, export and ``forward_features`` still work.
Folded weights files name the architecture ``mobilenet_v1_folded``; their state-dict keys are the
unfolded ones without ``*.bn.*`` and with ``*.conv.bias`` added.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import load_state_strict, read, save
from ..model import MobileNetConfig, MobileNetV1
from ..preprocessing import Preprocessing
from ..weights import WeightsInfo, weights_info

ARCHITECTURE = "mobilenet_v1_folded"


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new ``nn.Conv2d`` (with bias) computing ``bn(conv(x))`` as ``bn`` computes it in eval mode."""
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        raise TypeError(f"expected (Conv2d, BatchNorm2d), got ({type(conv).__name__}, {type(bn).__name__})")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"BatchNorm has {bn.num_features} channels but the conv outputs {conv.out_channels}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    c = conv.out_channels
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones(c, dtype=torch.float64, device=mean.device)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros(c, dtype=torch.float64, device=mean.device)
    scale = gamma / torch.sqrt(var + bn.eps)  # (C_out,)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(mean)
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                       conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                       device=conv.weight.device, dtype=conv.weight.dtype)
    # weight (C_out, C_in/groups, kh, kw) scaled per output channel
    folded.weight.copy_((conv.weight.double() * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype))
    folded.bias.copy_((beta + (bias - mean) * scale).to(conv.weight.dtype))
    return folded


def fold_bn(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Fold every ``(conv, bn)`` pair of ``conv_bn_act`` blocks; returns the folded model in eval mode.

    Works on any module tree built from ``nn.Sequential`` blocks with children named ``conv`` and
    ``bn`` (MobileNetV1 and the detection backbones). The folded model equals the original in eval
    mode only (folding uses the running statistics). ``inplace=False`` leaves ``model`` untouched.
    """
    if not inplace:
        model = copy.deepcopy(model)
    count = 0
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        names = dict(module.named_children())
        conv, bn = names.get("conv"), names.get("bn")
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            module.conv = fold_conv_bn(conv, bn)
            module.bn = nn.Identity()
            count += 1
    if count == 0:
        raise ValueError(f"no (conv, bn) pair to fold in {type(model).__name__} (already folded?)")
    model.bn_folded = True  # type: ignore[assignment]
    return model.eval()


def build_folded(config: MobileNetConfig | dict[str, Any]) -> MobileNetV1:
    """An empty folded MobileNetV1 (conv biases, no BatchNorm) to load a folded weights file into."""
    return fold_bn(MobileNetV1.from_config(config), inplace=True)  # type: ignore[return-value]




def save_folded(
    model: MobileNetV1,
    path: str | os.PathLike[str],
    *,
    class_names: list[str] | None = None,
    preprocessing: Preprocessing | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a folded model in the weights-file format of :func:`mobilenet.save` (architecture ``mobilenet_v1_folded``).

    Everything in ``model.weights_info`` travels along; ``class_names`` / ``preprocessing`` / ``extra`` replace
    or add to it.
    """
    if not isinstance(model, MobileNetV1) or not getattr(model, "bn_folded", False):
        raise TypeError("save_folded expects a MobileNetV1 returned by fold_bn")
    info = weights_info(model)
    if preprocessing is None and info.preprocessing is None:
        preprocessing = Preprocessing.imagenet(model.config.resolution)
    return save(model, path, info=info, class_names=class_names, preprocessing=preprocessing,
                extra={**(extra or {}), "bn_folded": True})


def load_folded(path: str | os.PathLike[str]) -> MobileNetV1:
    """Load a folded weights file, or fold an ordinary one on the fly; eval mode, on the CPU."""
    tensors, meta = read(path)
    arch = meta.get("architecture")
    if arch == ARCHITECTURE:
        model = build_folded(meta["config"])
        load_state_strict(model, tensors, str(path))
    elif arch == "mobilenet_v1":
        model = MobileNetV1.from_config(meta["config"])
        load_state_strict(model, tensors, str(path))
        model = fold_bn(model, inplace=True)  # type: ignore[assignment]
    else:
        raise ValueError(f"{path}: cannot fold architecture {arch!r} (expected mobilenet_v1)")
    model.weights_info = WeightsInfo.from_header(meta)  # type: ignore[assignment]
    return model.eval()
