"""TF-style RMSprop against hand-computed steps, weight-decay groups, schedules, EMA."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mobilenet.model import MobileNetV1
from mobilenet.optim import ModelEMA, RMSpropTF, YellowFin, build_optimizer, lr_multiplier, param_groups


def test_rmsprop_tf_matches_hand_computed_steps():
    # One scalar parameter, two steps, lr 0.1, decay 0.9, momentum 0.9, eps 1.0, ms starts at 1.
    w = nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    opt = RMSpropTF([w], lr=0.1, decay=0.9, momentum=0.9, eps=1.0)
    # step 1, g = 3: ms = 0.9*1 + 0.1*9 = 1.8; mom = 0.1 * 3 / sqrt(1.8 + 1.0); w = 2 - mom
    w.grad = torch.tensor([3.0], dtype=torch.float64)
    opt.step()
    ms1 = 1.8
    mom1 = 0.1 * 3 / math.sqrt(ms1 + 1.0)
    assert w.item() == pytest.approx(2.0 - mom1, abs=1e-12)
    # step 2, g = -1: ms = 0.9*1.8 + 0.1*1 = 1.72; mom = 0.9*mom1 + 0.1 * (-1) / sqrt(2.72)
    w.grad = torch.tensor([-1.0], dtype=torch.float64)
    opt.step()
    mom2 = 0.9 * mom1 + 0.1 * (-1) / math.sqrt(0.9 * ms1 + 0.1 * 1 + 1.0)
    assert w.item() == pytest.approx(2.0 - mom1 - mom2, abs=1e-12)
    assert opt.state[w]["square_avg"].item() == pytest.approx(1.72, abs=1e-12)


def test_rmsprop_tf_differs_from_torch_rmsprop():
    # PyTorch's RMSprop starts ms at 0 and adds eps outside the sqrt, so its first step is not TF's.
    torch.manual_seed(0)
    w0 = torch.randn(5, dtype=torch.float64)
    g = torch.randn(5, dtype=torch.float64)
    a, b = nn.Parameter(w0.clone()), nn.Parameter(w0.clone())
    a.grad, b.grad = g.clone(), g.clone()
    RMSpropTF([a], lr=0.01).step()
    torch.optim.RMSprop([b], lr=0.01, alpha=0.9, eps=1.0, momentum=0.9).step()
    tf_expected = w0 - 0.01 * g / (0.9 + 0.1 * g * g + 1.0).sqrt()
    torch.testing.assert_close(a.detach(), tf_expected)
    assert not torch.allclose(b.detach(), tf_expected, rtol=1e-3, atol=1e-6)


def test_rmsprop_tf_weight_decay_is_l2_and_skips_params_without_grad():
    w = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    frozen = nn.Parameter(torch.tensor([5.0], dtype=torch.float64))
    opt = RMSpropTF([w, frozen], lr=0.1, momentum=0.0, weight_decay=0.5)
    w.grad = torch.tensor([0.0], dtype=torch.float64)
    opt.step()
    g = 0.5 * 1.0  # L2: g + wd * w
    assert w.item() == pytest.approx(1.0 - 0.1 * g / math.sqrt(0.9 + 0.1 * g * g + 1.0), abs=1e-12)
    assert frozen.item() == 5.0 and frozen not in opt.state


@pytest.mark.parametrize("bad", [dict(lr=-1), dict(decay=1.0), dict(momentum=1.5), dict(eps=0.0)])
def test_rmsprop_tf_rejects_bad_hyperparameters(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        RMSpropTF([nn.Parameter(torch.zeros(1))], **bad)


def test_param_groups_split_depthwise_norm_and_bias():
    model = MobileNetV1(width_mult=0.25, num_classes=10)
    groups = {g["name"]: g for g in param_groups(model, weight_decay=4e-5, depthwise_weight_decay=1e-6)}
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert id(model.blocks[0].dw.conv.weight) in ids["depthwise"]
    assert id(model.blocks[0].pw.conv.weight) in ids["decay"]
    assert id(model.stem.conv.weight) in ids["decay"] and id(model.classifier.weight) in ids["decay"]
    assert {id(model.stem.bn.weight), id(model.stem.bn.bias), id(model.classifier.bias)} <= ids["no_decay"]
    assert len(ids["depthwise"]) == 13
    assert sum(len(v) for v in ids.values()) == len(list(model.parameters()))
    assert (groups["decay"]["weight_decay"], groups["depthwise"]["weight_decay"],
            groups["no_decay"]["weight_decay"]) == (4e-5, 1e-6, 0.0)


@pytest.mark.parametrize("name,cls", [("rmsprop_tf", RMSpropTF), ("sgd", torch.optim.SGD),
                                      ("adamw", torch.optim.AdamW)])
def test_build_optimizer(name, cls):
    opt = build_optimizer(MobileNetV1(width_mult=0.25, num_classes=3), name, lr=0.1, weight_decay=1e-4)
    assert isinstance(opt, cls) and len(opt.param_groups) == 3
    with pytest.raises(ValueError, match="optimizer must be one of"):
        build_optimizer(nn.Linear(2, 2), "lamb", lr=0.1)


def test_exponential_schedule_is_tf_staircase_with_warmup():
    f = lr_multiplier("exponential", steps_per_epoch=10, total_epochs=10, decay_rate=0.94, decay_epochs=2,
                      warmup_epochs=1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)  # linear warm-up over epoch 0
    assert f(10) == 1.0 and f(19) == 1.0  # epoch 1: still the first stair
    assert f(20) == pytest.approx(0.94) and f(39) == pytest.approx(0.94) and f(40) == pytest.approx(0.94 ** 2)


def test_cosine_and_step_schedules():
    f = lr_multiplier("cosine", steps_per_epoch=10, total_epochs=5, min_lr_ratio=0.1)
    assert f(0) == 1.0 and f(25) == pytest.approx(0.55) and f(50) == pytest.approx(0.1)
    s = lr_multiplier("step", steps_per_epoch=4, total_epochs=90, decay_rate=0.1, decay_epochs=30)
    assert s(0) == 1.0 and s(119) == 1.0 and s(120) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="schedule must be one of"):
        lr_multiplier("linear", steps_per_epoch=1, total_epochs=1)


def test_ema_follows_tf_num_updates_warmup():
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    ema = ModelEMA(model, decay=0.99)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # decay_0 = min(0.99, 1/10) = 0.1: ema = 0.1*0 + 0.9*1
    assert ema.module.weight.item() == pytest.approx(0.9)
    ema.update(model)  # decay_1 = 2/11
    assert ema.module.weight.item() == pytest.approx(0.9 * 2 / 11 + 9 / 11)
    assert ema.state_dict()["num_updates"] == 2


def test_build_nadam_and_yellowfin():
    model = MobileNetV1(width_mult=0.25, num_classes=3)
    nadam = build_optimizer(model, "nadam", lr=0.002)
    assert isinstance(nadam, torch.optim.NAdam) and nadam.defaults["eps"] == 1e-7  # Keras's epsilon
    yf = build_optimizer(model, "yellowfin", lr=1.0, weight_decay=1e-4)
    assert isinstance(yf, YellowFin) and len(yf.param_groups) == 3
    assert yf.tuned() == {"lr": 1.0, "momentum": 0.0}  # the paper's initial values


def test_yellowfin_single_step_minimises_the_papers_objective():
    # SingleStep: sqrt(mu) minimises x^2 D^2 + (1 - x)^4 C / h_min^2 over [0, 1] unless the condition number
    # bound ((sqrt(k) - 1) / (sqrt(k) + 1))^2 is larger; lr = (1 - sqrt(mu))^2 / h_min
    for h_min, variance, dist in ((1.0, 1.0, 1.0), (0.5, 0.01, 3.0), (4.0, 10.0, 0.1)):
        mu, lr = YellowFin._single_step(h_min, h_min, variance, dist)
        xs = torch.linspace(0, 1, 100001, dtype=torch.float64)
        objective = xs**2 * dist**2 + (1 - xs) ** 4 * variance / h_min**2
        assert math.sqrt(mu) == pytest.approx(float(xs[objective.argmin()]), abs=1e-4)
        assert lr == pytest.approx((1 - math.sqrt(mu)) ** 2 / h_min)
    mu, _ = YellowFin._single_step(1.0, 100.0, 1.0, 1.0)  # condition number 100: mu >= (9/11)^2
    assert mu >= (9 / 11) ** 2 - 1e-12


def test_yellowfin_tunes_on_a_quadratic_and_its_state_round_trips():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(20))
    curvature = torch.linspace(0.5, 5.0, 20)
    opt = YellowFin([w], beta=0.9, window=5)

    def loss() -> torch.Tensor:
        return 0.5 * (curvature * w**2).sum()

    start = loss().item()
    for _ in range(300):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 1e-3 * start
    tuned = opt.tuned()
    assert 0 < tuned["momentum"] < 1 and tuned["lr"] > 0
    again = YellowFin([nn.Parameter(w.detach().clone())], beta=0.9, window=5)
    again.load_state_dict(opt.state_dict())
    assert again.tuned() == tuned and again.state["yellowfin"]["window"] == opt.state["yellowfin"]["window"]


@pytest.mark.slow
def test_nadam_and_yellowfin_train_the_digits_as_sgd_does():
    """A short CPU check on the bundled digits: 6 epochs under the cosine schedule (the recipes' default; for
    YellowFin it scales the tuned rate), each optimizer's final test accuracy reaches 95 % and SGD's within 3 points."""
    import numpy as np

    from mobilenet.data.digits import SPLIT_SEED, TEST_FRACTION, load_digit_arrays, stratified_indices, upscale

    images, labels = load_digit_arrays()
    x = torch.from_numpy(upscale(images, 32)).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.25)
    y = torch.from_numpy(np.asarray(labels)).long()
    train_idx, test_idx = (torch.tensor(i) for i in stratified_indices(y.tolist(), 10, TEST_FRACTION, SPLIT_SEED))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    final = {}
    try:
        for name, lr in (("sgd", 0.1), ("nadam", 0.01), ("yellowfin", 1.0)):
            torch.manual_seed(0)
            model = MobileNetV1(width_mult=0.25, resolution=32, stem_stride=1, num_classes=10)
            opt = build_optimizer(model, name, lr=lr, weight_decay=5e-4)
            g = torch.Generator().manual_seed(0)
            steps = (len(train_idx) + 63) // 64
            schedule = lr_multiplier("cosine", steps_per_epoch=steps, total_epochs=6)
            for epoch in range(6):
                model.train()
                order = train_idx[torch.randperm(len(train_idx), generator=g)]
                for i in range(0, len(order), 64):
                    batch = order[i:i + 64]
                    for group in opt.param_groups:
                        group["lr"] = lr * schedule(epoch * steps + i // 64)
                    opt.zero_grad()
                    nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
                    opt.step()
                model.eval()
            with torch.no_grad():
                final[name] = float((model(x[test_idx]).argmax(1) == y[test_idx]).float().mean())
    finally:
        torch.set_num_threads(threads)
    for name in ("nadam", "yellowfin"):
        assert final[name] >= 0.95 and final[name] >= final["sgd"] - 0.03, final
