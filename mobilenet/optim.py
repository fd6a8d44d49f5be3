"""Optimisers, learning-rate schedules, weight-decay groups and an EMA of weights.

* ``RMSpropTF``: RMSprop exactly as TensorFlow 1 / TF-slim ran it for MobileNet and Inception v3.
  PyTorch's ``torch.optim.RMSprop`` differs in three ways that matter for this recipe (and is known
  to diverge on it): eps is added *outside* the square root, the squared average starts at 0 (so the
  first steps are huge), and the learning rate multiplies the update after the momentum buffer
  rather than inside it. TF's update, per parameter ``w`` with gradient ``g``::

      ms  = decay * ms + (1 - decay) * g**2          # ms starts at 1.0
      mom = momentum * mom + lr * g / sqrt(ms + eps)  # eps = 1.0, inside the square root
      w   = w - mom

* Schedules map an optimiser step to a learning-rate multiplier: TF-style exponential decay
  (staircase per ``decay_epochs`` epochs), cosine, step; each with linear warm-up.
* ``param_groups`` puts depthwise filters, BatchNorm parameters and biases in groups with their own
  weight decay: the paper (Sec. 4) says "very little or no weight decay" on depthwise filters.
* ``ModelEMA`` keeps an exponential moving average of weights (TF's ``ExponentialMovingAverage``,
  with its ``num_updates`` warm-up).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

OPTIMIZERS = ("rmsprop_tf", "sgd", "adamw")
SCHEDULES = ("exponential", "cosine", "step", "constant")


class RMSpropTF(torch.optim.Optimizer):
    """RMSprop in TensorFlow's formulation (see the module docstring for the update).

    ``weight_decay`` is L2 added to the gradient (TF-slim puts an L2 loss on the weights, which is
    the same thing for this optimiser).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.045,
        *,
        decay: float = 0.9,
        momentum: float = 0.9,
        eps: float = 1.0,
        weight_decay: float = 0.0,
        initial_square_average: float = 1.0,
    ) -> None:
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        defaults = dict(lr=lr, decay=decay, momentum=momentum, eps=eps, weight_decay=weight_decay,
                        initial_square_average=initial_square_average)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, decay, momentum, eps, wd = (group[k] for k in ("lr", "decay", "momentum", "eps", "weight_decay"))
            for p in group["params"]:
                if p.grad is None:  # frozen or unused: no decay, no momentum (as TF, which never sees them)
                    continue
                g = p.grad
                if g.is_sparse:
                    raise RuntimeError("RMSpropTF does not support sparse gradients")
                if wd != 0:
                    g = g.add(p, alpha=wd)
                state = self.state[p]
                if len(state) == 0:
                    state["square_avg"] = torch.full_like(p, group["initial_square_average"],
                                                          memory_format=torch.preserve_format)
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                ms, mom = state["square_avg"], state["momentum_buffer"]
                ms.mul_(decay).addcmul_(g, g, value=1 - decay)
                update = g / ms.add(eps).sqrt_()
                if momentum > 0:
                    mom.mul_(momentum).add_(update, alpha=lr)
                    p.sub_(mom)
                else:
                    p.sub_(update, alpha=lr)
        return loss


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def param_groups(
    model: nn.Module,
    *,
    weight_decay: float,
    depthwise_weight_decay: float = 0.0,
    norm_bias_weight_decay: float = 0.0,
) -> list[dict[str, Any]]:
    """Split trainable parameters into weight-decay groups: ``decay`` (conv/linear weights),
    ``depthwise`` (3x3 depthwise filters) and ``no_decay`` (BatchNorm weight/bias, every bias).

    Groups carry a ``name`` key so logs and tests can tell them apart; empty groups are dropped.
    """
    buckets: dict[str, list[nn.Parameter]] = {"decay": [], "depthwise": [], "no_decay": []}
    seen: set[int] = set()
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            if isinstance(module, nn.modules.batchnorm._NormBase) or pname == "bias" or p.ndim <= 1:
                buckets["no_decay"].append(p)
            elif _is_depthwise(module):
                buckets["depthwise"].append(p)
            else:
                buckets["decay"].append(p)
    wd = {"decay": weight_decay, "depthwise": depthwise_weight_decay, "no_decay": norm_bias_weight_decay}
    return [{"name": k, "params": v, "weight_decay": wd[k]} for k, v in buckets.items() if v]


def build_optimizer(
    model: nn.Module,
    name: str,
    *,
    lr: float,
    weight_decay: float = 0.0,
    depthwise_weight_decay: float = 0.0,
    norm_bias_weight_decay: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = True,
    rmsprop_decay: float = 0.9,
    rmsprop_eps: float = 1.0,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """``"rmsprop_tf"`` (the paper's), ``"sgd"`` (Nesterov by default) or ``"adamw"`` over
    ``param_groups(model, ...)``. For AdamW the decay is decoupled (AdamW's own); for the others it is L2."""
    groups = param_groups(model, weight_decay=weight_decay, depthwise_weight_decay=depthwise_weight_decay,
                          norm_bias_weight_decay=norm_bias_weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if name == "rmsprop_tf":
        return RMSpropTF(groups, lr=lr, decay=rmsprop_decay, momentum=momentum, eps=rmsprop_eps)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


def lr_multiplier(
    schedule: str,
    *,
    steps_per_epoch: int,
    total_epochs: float,
    warmup_epochs: float = 0.0,
    warmup_start: float = 0.0,
    decay_rate: float = 0.94,
    decay_epochs: float = 2.0,
    min_lr_ratio: float = 0.0,
) -> Callable[[int], float]:
    """A function ``step -> multiplier of the base learning rate`` (``step`` counts optimiser steps from 0).

    * ``exponential``: TF's ``exponential_decay(staircase=True)``: ``decay_rate ** floor(epoch / decay_epochs)``.
    * ``cosine``: from 1 to ``min_lr_ratio`` over the epochs after warm-up, per step.
    * ``step``: ``decay_rate ** floor(epoch / decay_epochs)`` too, but meant with a big drop (e.g. 0.1 every 30).
    * ``constant``: 1.

    Warm-up rises linearly from ``warmup_start`` to the scheduled value over ``warmup_epochs``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if decay_epochs <= 0:
        raise ValueError(f"decay_epochs must be > 0, got {decay_epochs}")
    warmup_steps = round(warmup_epochs * steps_per_epoch)
    total_steps = max(round(total_epochs * steps_per_epoch), 1)

    def scheduled(step: int) -> float:
        epoch = step / steps_per_epoch
        if schedule in ("exponential", "step"):
            return decay_rate ** math.floor(epoch / decay_epochs + 1e-9)
        if schedule == "cosine":
            t = min(max(step - warmup_steps, 0) / max(total_steps - warmup_steps, 1), 1.0)
            return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
        return 1.0

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            frac = (step + 1) / warmup_steps
            return warmup_start + (scheduled(step) - warmup_start) * frac
        return scheduled(step)

    return multiplier


class ModelEMA:
    """Exponential moving average of a model's parameters (buffers are copied, as TF-slim does).

    ``decay_t = min(decay, (1 + t) / (10 + t))`` (TF's ``num_updates`` warm-up) so early averages
    are not dominated by the random initialisation. ``module`` is an eval-mode copy to evaluate.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, *, warmup: bool = True) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        self.num_updates += 1
        ema_params = dict(self.module.named_parameters())
        for name, p in model.named_parameters():
            ema_params[name].lerp_(p.detach().to(ema_params[name].dtype), 1 - d)
        ema_buffers = dict(self.module.named_buffers())
        for name, b in model.named_buffers():
            ema_buffers[name].copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_updates = int(state["num_updates"])
