"""A static-shape, traceable view of a MobileNetV1, which quantization and export need.

Two things in :class:`~mobilenet.model.MobileNetV1` get in the way of graph capture:

* ``_check_input`` branches on the input's shape in Python, which ``torch.fx`` symbolic tracing
  cannot follow;
* the tf preset's :class:`~mobilenet.model.SamePad2d` computes its padding from the input size at
  run time. For a fixed input size that padding is a constant, so it becomes an ``nn.ZeroPad2d``.

:class:`StaticMobileNet` shares (does not copy) the modules it is given; :func:`static_model`
works on a copy so the caller's model is never changed.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..model import MobileNetV1, SamePad2d


def _size_pair(resolution: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(resolution, int):
        return resolution, resolution
    h, w = resolution
    return int(h), int(w)


def freeze_same_padding(model: nn.Module, resolution: int | tuple[int, int], *, in_chans: int = 3) -> nn.Module:
    """Replace every ``SamePad2d`` in ``model`` (in place) by the ``nn.ZeroPad2d`` it computes at this input size.

    The input size each pad sees is recorded with forward hooks during one forward pass of a
    ``(1, in_chans, H, W)`` zero tensor, so this works for any network built from ``conv_bn_act``.
    The result equals the original exactly at ``resolution`` and only there.
    """
    pads = [(name, m) for name, m in model.named_modules() if isinstance(m, SamePad2d)]
    if not pads:
        return model
    seen: dict[str, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=name: seen.__setitem__(n, tuple(args[0].shape[-2:])))
             for name, m in pads]
    h, w = _size_pair(resolution)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = model.training
    model.eval()  # the probe pass must not update BatchNorm statistics
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_chans, h, w, device=device, dtype=dtype))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    for name, m in pads:
        if name not in seen:
            raise ValueError(f"padding module {name!r} was not reached by a forward pass; cannot freeze it")
        top, bottom = m._pads(seen[name][0])
        left, right = m._pads(seen[name][1])
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, nn.ZeroPad2d((left, right, top, bottom)))
    return model


class StaticMobileNet(nn.Module):
    """stem -> blocks -> global average pool -> dropout -> classifier, with no Python-side shape checks.

    ``(B, in_chans, H, W) -> (B, num_classes)``, the same function as ``MobileNetV1.forward``.
    The pooling is an ``nn.AdaptiveAvgPool2d`` module (quantization backends have a kernel for it).
    ``config``, ``bn_folded`` and ``weights_info`` are carried over from the source model.
    """

    def __init__(self, model: MobileNetV1) -> None:
        super().__init__()
        if not isinstance(model, MobileNetV1):
            raise TypeError(f"expected a MobileNetV1, got {type(model).__name__}")
        self.config = model.config
        self.stem = model.stem
        self.blocks = model.blocks
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = model.dropout
        self.classifier = model.classifier
        # Static flag, resolved now, so the traced graph has no isinstance check in it.
        self.conv_head = isinstance(model.classifier, nn.Conv2d)
        self.bn_folded = getattr(model, "bn_folded", False)
        info = getattr(model, "weights_info", None)
        if info is not None:
            self.weights_info = info

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(self.stem(x)))  # (B, C, 1, 1)
        x = self.dropout(x)
        if self.conv_head:
            return self.classifier(x).flatten(1)
        return self.classifier(x.flatten(1))


def static_model(model: MobileNetV1, resolution: int | tuple[int, int] | None = None) -> StaticMobileNet:
    """A traceable copy of ``model`` for one input size (default: ``model.config.resolution``), in eval mode."""
    if not isinstance(model, MobileNetV1):
        raise TypeError(f"expected a MobileNetV1, got {type(model).__name__}")
    resolution = model.config.resolution if resolution is None else resolution
    copied = copy.deepcopy(model)
    freeze_same_padding(copied, resolution, in_chans=model.config.in_chans)
    return StaticMobileNet(copied).eval()
