"""MobileNets that run their depthwise separable blocks through the Triton kernels.

* :func:`fused_inference_model`: BN folded, every ``DepthwiseSeparable`` block one fused kernel
  (:mod:`.dwpw`); the stem, pooling, classifier (and an SSD's extra layers and heads) stay PyTorch (cuDNN).
  Inference only.
* :func:`use_triton_depthwise`: in place, every ``dw`` stage's 3x3 depthwise conv becomes a Triton conv with
  its own backward (:mod:`.depthwise`); BatchNorm, activations, everything else and the state-dict keys stay
  as they were, so the model trains, saves and loads as before.

Both fall back to plain PyTorch for any input the kernels cannot take (a CPU tensor without Triton's
interpreter, no Triton at all), so the models are always correct, only not always faster. TF "SAME" padding
(the tf preset) is computed from each input's size, as :class:`~mobilenet.model.SamePad2d` does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..deploy.fold import fold_bn
from ..model import DepthwiseSeparable, SamePad2d
from . import kernels_usable


def _pads_of(stage: nn.Sequential, h: int, w: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) zero padding that a conv_bn_act stage applies to an (h, w) input."""
    pad = getattr(stage, "pad", None)
    if isinstance(pad, SamePad2d):
        (top, bottom), (left, right) = pad._pads(h), pad._pads(w)
        return top, left, bottom, right
    if isinstance(pad, nn.ZeroPad2d):
        left, right, top, bottom = pad.padding
        return top, left, bottom, right
    ph, pw = stage.conv.padding
    return ph, pw, ph, pw


def _is_relu6(act: nn.Module) -> bool:
    if isinstance(act, nn.ReLU6):
        return True
    if isinstance(act, nn.ReLU):
        return False
    raise TypeError(f"the fused kernels apply ReLU or ReLU6, not {type(act).__name__}")


class FusedSeparable(nn.Module):
    """A BN-folded ``DepthwiseSeparable`` block computed by one kernel (its ``dw`` and ``pw`` stages kept as the
    PyTorch fallback)."""

    def __init__(self, block: DepthwiseSeparable) -> None:
        super().__init__()
        for stage in (block.dw, block.pw):
            if not isinstance(stage.bn, nn.Identity) or stage.conv.bias is None:
                raise ValueError("fold BatchNorm into the block first (mobilenet.deploy.fold.fold_bn)")
        self.dw, self.pw = block.dw, block.pw
        self.stride = block.dw.conv.stride[0]
        self.relu6 = _is_relu6(block.pw.act)
        if _is_relu6(block.dw.act) != self.relu6:
            raise ValueError("the fused kernel applies one activation type to both stages")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not kernels_usable(x.device.type):
            return self.pw(self.dw(x))
        from .dwpw import dwpw

        return dwpw(x, self.dw.conv.weight, self.dw.conv.bias, self.pw.conv.weight, self.pw.conv.bias,
                    stride=self.stride, pads=_pads_of(self.dw, *x.shape[-2:]), relu6=self.relu6)


def fused_inference_model(model: nn.Module) -> nn.Module:
    """A BN-folded eval-mode copy of ``model`` in which every ``DepthwiseSeparable`` block runs as one fused kernel.

    Works on any module tree built from the model's blocks: a ``MobileNetV1`` (its ``forward``,
    ``forward_features`` and ``forward_stages`` all use the fused blocks) or an SSD's backbone. Inference only;
    the caller's model is left untouched.
    """
    fused = fold_bn(model)  # a folded copy in eval mode
    for parent in list(fused.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, DepthwiseSeparable):
                setattr(parent, name, FusedSeparable(child))
    return fused.eval()


def count_fused(model: nn.Module) -> int:
    """How many blocks of ``model`` run as fused kernels."""
    return sum(isinstance(m, FusedSeparable) for m in model.modules())


class TritonDepthwiseConv2d(nn.Conv2d):
    """A depthwise 3x3 ``nn.Conv2d`` (same parameters and state-dict keys) computed by the Triton kernels.

    ``same_padding``: TF "SAME" padding computed from each input's size (it replaces a ``SamePad2d`` in front).
    """

    def __init__(self, channels: int, *, stride: int, padding: int, same_padding: bool) -> None:
        super().__init__(channels, channels, 3, stride, padding, groups=channels, bias=False)
        self.same = SamePad2d(3, stride) if same_padding else None

    def _pads(self, h: int, w: int) -> tuple[int, int, int, int]:
        if self.same is not None:
            (top, bottom), (left, right) = self.same._pads(h), self.same._pads(w)
            return top, left, bottom, right
        ph, pw = self.padding
        return ph, pw, ph, pw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not kernels_usable(x.device.type):
            if self.same is not None:
                x = self.same(x)
            return F.conv2d(x, self.weight.to(x.dtype), None, self.stride, self.padding, 1, self.groups)
        from .depthwise import depthwise3x3

        return depthwise3x3(x, self.weight, self.stride[0], self._pads(*x.shape[-2:]))


def use_triton_depthwise(model: nn.Module) -> int:
    """Swap, in place, the 3x3 depthwise conv of every ``dw`` stage in ``model`` for a :class:`TritonDepthwiseConv2d`
    sharing its weight. Returns how many were swapped."""
    swapped = 0
    for block in model.modules():
        if not isinstance(block, DepthwiseSeparable):
            continue
        stage = block.dw
        conv = stage.conv
        if isinstance(conv, TritonDepthwiseConv2d) or conv.kernel_size != (3, 3) or conv.bias is not None:
            continue
        pad = getattr(stage, "pad", None)
        if pad is not None and not isinstance(pad, SamePad2d):
            continue  # a frozen ZeroPad2d (static export copies): leave it to PyTorch
        new = TritonDepthwiseConv2d(conv.in_channels, stride=conv.stride[0], padding=conv.padding[0],
                                    same_padding=pad is not None)
        new.weight = conv.weight
        if pad is not None:
            stage.pad = nn.Identity()
        stage.conv = new
        swapped += 1
    return swapped
