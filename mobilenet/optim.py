"""Optimisers, learning-rate schedules, weight-decay groups and an EMA of weights.

* ``RMSpropTF``: RMSprop exactly as TensorFlow 1 / TF-slim ran it for MobileNet and Inception v3.
  PyTorch's ``torch.optim.RMSprop`` differs in three ways that matter for this recipe (and is known
  to diverge on it): eps is added *outside* the square root, the squared average starts at 0 (so the
  first steps are huge), and the learning rate multiplies the update after the momentum buffer
  rather than inside it. TF's update, per parameter ``w`` with gradient ``g``::

      ms  = decay * ms + (1 - decay) * g**2          # ms starts at 1.0
      mom = momentum * mom + lr * g / sqrt(ms + eps)  # eps = 1.0, inside the square root
      w   = w - mom

* ``YellowFin`` (Zhang & Mitliagkas 2017, "YellowFin and the Art of Momentum Tuning", arXiv:1706.03471):
  momentum SGD whose momentum and learning rate are tuned every step from measurements of the gradients
  (curvature range, gradient variance, distance to the optimum); the seed's TF code ships it. ``nadam``
  (Nesterov Adam, Dozat 2016: the seed's Keras CIFAR-10 example) is ``torch.optim.NAdam``.
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

from .model import is_depthwise

OPTIMIZERS = ("rmsprop_tf", "sgd", "adamw", "nadam", "yellowfin")
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


class YellowFin(torch.optim.Optimizer):
    """Momentum SGD with momentum and learning rate tuned on the fly (YellowFin, Algorithm 1 of the paper).

    Every step measures, over all parameters together (h_t = ||g_t||^2):

    * the curvature range: the smallest and largest h_t over the last ``window`` steps, each smoothed by an
      exponential moving average (``beta``; h_min in log space, as the authors' code, so it follows drops);
    * the gradient variance C = E||g||^2 - ||E g||^2 (moving averages);
    * the distance to the optimum D = E||g|| / E h (moving averages);

    then solves the paper's SingleStep problem: sqrt(mu) is the real root of
    x^2 D^2 + (1 - x)^4 C / h_min^2 (Vieta's substitution of the cubic), mu = max(x^2,
    ((sqrt(h_max/h_min) - 1) / (sqrt(h_max/h_min) + 1))^2) and lr = (1 - sqrt(mu))^2 / h_min; both are
    smoothed by ``beta`` and applied as ``buf = mu * buf + g; w -= lr * factor * buf``. The moving averages
    are zero-debiased. As the authors' code: the tuned rate starts slowly (capped by ``t / (10 window)`` of
    itself for the first steps) and a gradient far above the curvature range (an exploding gradient) is clipped
    to sqrt(h_max).

    ``lr`` is the *factor* on the tuned rate (1.0: as tuned; a schedule multiplies it, as the authors'
    ``lr_factor``); ``weight_decay`` is L2 added to the gradient. The tuned values are in ``tuned()``.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1.0, *, beta: float = 0.999, window: int = 20,
                 initial_lr: float = 1.0, initial_momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        if lr < 0:
            raise ValueError(f"lr (the factor on the tuned rate) must be >= 0, got {lr}")
        if not 0 < beta < 1:
            raise ValueError(f"beta must be in (0, 1), got {beta}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))
        self.beta, self.window = beta, window
        # global statistics: plain numbers and a list (optimizer state_dict keeps non-parameter keys as they are)
        self.state["yellowfin"] = {"step": 0, "lr": initial_lr, "mu": initial_momentum, "window": [],
                                   "h_min_log": 0.0, "h_max": 0.0, "g2": 0.0, "g_norm": 0.0, "dist": 0.0}

    def tuned(self) -> dict[str, float]:
        """The current tuned learning rate (before the factor) and momentum."""
        s = self.state["yellowfin"]
        return {"lr": float(s["lr"]), "momentum": float(s["mu"])}

    @staticmethod
    def _single_step(h_min: float, h_max: float, variance: float, dist: float) -> tuple[float, float]:
        """The paper's SingleStep: (momentum, learning rate) for the measured curvature range, variance, distance."""
        # x = sqrt(mu) solves x^2 D^2 + (1 - x)^4 C / h_min^2; with x = y + 1: y^3 + p y + p = 0, p = D^2 h_min^2 / (2C)
        p = dist**2 * h_min**2 / (2 * variance)
        w3 = (-math.sqrt(p**2 + 4 / 27 * p**3) - p) / 2
        w = math.copysign(abs(w3) ** (1 / 3), w3)
        x = (w - p / (3 * w)) + 1 if w != 0 else 1.0
        ratio = math.sqrt(max(h_max / h_min, 1.0))
        mu = max(x**2, ((ratio - 1) / (ratio + 1)) ** 2)
        return mu, (1 - math.sqrt(mu)) ** 2 / h_min

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        s, beta, eps = self.state["yellowfin"], self.beta, 1e-12
        grads: list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]] = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("YellowFin does not support sparse gradients")
                g = p.grad if group["weight_decay"] == 0 else p.grad.add(p, alpha=group["weight_decay"])
                grads.append((p, g, group))
        if not grads:
            return loss
        h = float(sum(torch.sum(g.float() * g.float()) for _, g, _ in grads))  # one sync per step
        t = s["step"]
        debias = 1 - beta ** (t + 1)
        if t > 0 and h > s["h_max"] * 100 and s["h_max"] > 0:  # exploding gradient: clip to sqrt(h_max)
            scale = math.sqrt(s["h_max"] / h)
            grads = [(p, g * scale, group) for p, g, group in grads]
            h = s["h_max"]
        s["window"] = (s["window"] + [h])[-self.window:]
        s["h_min_log"] = beta * s["h_min_log"] + (1 - beta) * math.log(min(s["window"]) + eps)
        s["h_max"] = beta * s["h_max"] + (1 - beta) * max(s["window"])
        s["g2"] = beta * s["g2"] + (1 - beta) * h
        s["g_norm"] = beta * s["g_norm"] + (1 - beta) * math.sqrt(h)
        mean_sq = 0.0
        for p, g, _ in grads:
            st = self.state[p]
            if "grad_avg" not in st:
                st["grad_avg"] = torch.zeros_like(p)
                st["momentum_buffer"] = torch.zeros_like(p)
            st["grad_avg"].mul_(beta).add_(g, alpha=1 - beta)
            mean_sq += float(torch.sum(st["grad_avg"] * st["grad_avg"]))
        s["dist"] = beta * s["dist"] + (1 - beta) * s["g_norm"] / (s["g2"] + eps)
        h_min, h_max = math.exp(s["h_min_log"] / debias), s["h_max"] / debias
        variance = max(s["g2"] / debias - mean_sq / debias**2, 1e-6)
        if t > 0:
            mu_t, lr_t = self._single_step(max(h_min, eps), max(h_max, h_min, eps), variance, s["dist"] / debias)
            lr_t = min(lr_t, lr_t * (t + 1) / (10 * self.window))  # slow start
            s["mu"] = beta * s["mu"] + (1 - beta) * mu_t
            s["lr"] = beta * s["lr"] + (1 - beta) * lr_t
        s["step"] = t + 1
        for p, g, group in grads:
            buf = self.state[p]["momentum_buffer"]
            buf.mul_(s["mu"]).add_(g)
            p.sub_(buf, alpha=s["lr"] * group["lr"])
        return loss


def param_groups(
    model: nn.Module,
    *,
    weight_decay: float,
    depthwise_weight_decay: float = 0.0,
    norm_bias_weight_decay: float = 0.0,
    lr_scales: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Split trainable parameters into weight-decay groups: ``decay`` (conv/linear weights),
    ``depthwise`` (3x3 depthwise filters) and ``no_decay`` (BatchNorm weight/bias, every bias).

    ``lr_scales`` maps a parameter-name prefix to a factor on the learning rate (``{"classifier.": 10.0}``: a new
    head learns 10x faster than a pretrained body); those parameters get groups of their own (``decay@classifier.``
    ...) carrying ``lr_scale``, which the training loop multiplies into the scheduled rate.
    Groups carry a ``name`` key so logs and tests can tell them apart; empty groups are dropped.
    """
    scales = {k: float(v) for k, v in (lr_scales or {}).items() if float(v) != 1.0}
    buckets: dict[tuple[str, str], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            if isinstance(module, nn.modules.batchnorm._NormBase) or pname == "bias" or p.ndim <= 1:
                kind = "no_decay"
            elif is_depthwise(module):
                kind = "depthwise"
            else:
                kind = "decay"
            full = f"{mname}.{pname}" if mname else pname
            prefix = next((k for k in scales if full.startswith(k)), "")
            buckets.setdefault((kind, prefix), []).append(p)
    wd = {"decay": weight_decay, "depthwise": depthwise_weight_decay, "no_decay": norm_bias_weight_decay}
    order = {"decay": 0, "depthwise": 1, "no_decay": 2}
    groups = []
    for (kind, prefix), params in sorted(buckets.items(), key=lambda kv: (kv[0][1], order[kv[0][0]])):
        group: dict[str, Any] = {"name": f"{kind}@{prefix}" if prefix else kind, "params": params,
                                 "weight_decay": wd[kind]}
        if prefix:
            group["lr_scale"] = scales[prefix]
        groups.append(group)
    return groups


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
    lr_scales: dict[str, float] | None = None,
) -> torch.optim.Optimizer:
    """``"rmsprop_tf"`` (the paper's), ``"sgd"`` (Nesterov by default), ``"adamw"``, ``"nadam"`` (Keras's
    Nadam, the seed's CIFAR-10 optimizer) or ``"yellowfin"`` (``lr`` is a factor on its tuned rate: 1.0 as
    tuned) over ``param_groups(model, ...)``. For AdamW the decay is decoupled (AdamW's own); for the others
    it is L2. ``lr_scales``: see :func:`param_groups` (each scaled group starts at ``lr * lr_scale``)."""
    groups = param_groups(model, weight_decay=weight_decay, depthwise_weight_decay=depthwise_weight_decay,
                          norm_bias_weight_decay=norm_bias_weight_decay, lr_scales=lr_scales)
    for g in groups:
        if "lr_scale" in g:
            g["lr"] = lr * g["lr_scale"]
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if name == "rmsprop_tf":
        return RMSpropTF(groups, lr=lr, decay=rmsprop_decay, momentum=momentum, eps=rmsprop_eps)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    if name == "nadam":
        # Keras's Nadam: epsilon 1e-7 and its momentum-decay schedule (torch's momentum_decay=0.004 is the same)
        return torch.optim.NAdam(groups, lr=lr, betas=betas, eps=1e-7)
    if name == "yellowfin":
        return YellowFin(groups, lr=lr)
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
