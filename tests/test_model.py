"""The model family: Table 1's structure, presets, baselines, shapes, the model contract, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobilenet import MobileNetConfig, MobileNetV1, create_model, list_models
from mobilenet.model import LAYERS, SamePad2d


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def _meta(**kwargs: object) -> MobileNetV1:
    """A model on the meta device: its structure without allocating or initialising weights (where only
    layers, shapes and keys matter; a forward pass stays on the CPU, where it is faster than on meta here)."""
    with torch.device("meta"):
        return MobileNetV1(**kwargs)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("preset", ["paper", "tf"])
def test_grid_shapes(name: str, preset: str) -> None:
    model = create_model(name, preset=preset).eval()
    r = model.config.resolution
    with torch.inference_mode():
        feats = model.forward_features(torch.randn(1, 3, r, r))
        logits = model.forward_head(feats)
    assert feats.shape == (1, model.num_features, r // 32, r // 32)
    assert logits.shape == (1, 1000)
    assert model.num_features == max(int(1024 * model.config.width_mult), 8)


@pytest.mark.parametrize("size", [32, 33, 97, 300])
@pytest.mark.parametrize("preset", ["paper", "tf"])
def test_odd_sizes_and_non_square(size: int, preset: str) -> None:
    model = MobileNetV1(width_mult=0.25, preset=preset).eval()
    with torch.inference_mode():
        feats = model.forward_features(torch.randn(2, 3, size, size + 7))
        logits = model(torch.randn(2, 3, size, size + 7))
    # both padding schemes give ceil(n / 2) at every stride-2 layer
    assert feats.shape[-2:] == (-(-size // 32), -(-(size + 7) // 32))
    assert logits.shape == (2, 1000)


def test_table1_structure() -> None:
    model = _meta()
    convs = _convs(model)
    assert len(convs) == 1 + 2 * 13 + 0  # stem + (dw, pw) x 13; paper preset classifier is Linear
    stem = model.stem.conv
    assert (stem.in_channels, stem.out_channels, stem.kernel_size, stem.stride) == (3, 32, (3, 3), (2, 2))
    in_ch = 32
    for block, (out_ch, stride) in zip(model.blocks, LAYERS, strict=True):
        dw, pw = block.dw.conv, block.pw.conv
        assert (dw.in_channels, dw.out_channels, dw.groups, dw.kernel_size, dw.stride) == (
            in_ch, in_ch, in_ch, (3, 3), (stride, stride))
        assert (pw.in_channels, pw.out_channels, pw.kernel_size, pw.stride) == (in_ch, out_ch, (1, 1), (1, 1))
        assert all(c.bias is None for c in (dw, pw))  # BN follows: no conv bias
        in_ch = out_ch
    assert isinstance(model.classifier, nn.Linear) and model.classifier.weight.shape == (1000, 1024)


def test_presets() -> None:
    paper, tf = _meta(preset="paper"), _meta(preset="tf", num_classes=1001)
    assert all(isinstance(m.stem.act, nn.ReLU) and not isinstance(m.stem.act, nn.ReLU6) for m in [paper])
    assert isinstance(tf.stem.act, nn.ReLU6)
    assert {m.eps for m in paper.modules() if isinstance(m, nn.BatchNorm2d)} == {1e-5}
    assert {m.eps for m in tf.modules() if isinstance(m, nn.BatchNorm2d)} == {1e-3}
    assert isinstance(tf.classifier, nn.Conv2d) and tf.classifier.weight.shape == (1001, 1024, 1, 1)
    assert tf.classifier.bias is not None
    assert paper.dropout.p == 0.0 and tf.dropout.p == pytest.approx(1e-3)
    # SAME padding only where TF pads asymmetrically: before the 5 stride-2 convs (stem + 4 dw)
    assert sum(isinstance(m, SamePad2d) for m in tf.modules()) == 5
    assert not any(isinstance(m, SamePad2d) for m in paper.modules())
    # same parameter layout: weights move between presets (classifier reshaped)
    sd = paper.state_dict()
    sd = {k: v for k, v in sd.items() if not k.startswith("classifier")}
    assert set(sd) == {k for k in tf.state_dict() if not k.startswith("classifier")}


def test_timm_preset() -> None:
    timm = _meta(preset="timm")
    assert isinstance(timm.stem.act, nn.ReLU6) and isinstance(timm.classifier, nn.Linear)
    assert timm.stem.conv.padding == (1, 1) and timm.stem.bn.eps == 1e-5
    assert list(timm.state_dict()) == list(_meta().state_dict())


def test_same_padding_matches_keras_and_tf() -> None:
    pad = SamePad2d(3, 2)
    even, odd = torch.randn(1, 1, 8, 8), torch.randn(1, 1, 7, 9)
    # Keras: ZeroPadding2D(((0, 1), (0, 1))) for stride-2 layers on even inputs
    assert torch.equal(pad(even), F.pad(even, (0, 1, 0, 1)))
    # TF SAME on odd inputs pads symmetrically
    assert torch.equal(pad(odd), F.pad(odd, (1, 1, 1, 1)))
    conv = nn.Conv2d(1, 1, 3, 2)
    for n in (7, 8, 33, 224):
        assert conv(pad(torch.randn(1, 1, n, n))).shape[-1] == -(-n // 2)


def test_baselines() -> None:
    full = _meta(conv_type="full")
    assert not any(c.groups > 1 for c in _convs(full))
    assert len(full.blocks) == 13 and all(b.conv.kernel_size == (3, 3) for b in full.blocks)
    shallow = _meta(shallow=True)
    assert len(shallow.blocks) == 8
    assert [b.pw.conv.out_channels for b in shallow.blocks] == [64, 128, 128, 256, 256, 512, 1024, 1024]
    with torch.inference_mode():  # the forward pass at a quarter width: the same layers run
        shallow, full = MobileNetV1(shallow=True, width_mult=0.25), MobileNetV1(conv_type="full", width_mult=0.25)
        assert shallow.eval()(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
        assert full.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


@pytest.mark.parametrize(("alpha", "expected"), [(1.0, 32), (0.75, 24), (0.5, 16), (0.25, 8), (0.1, 8), (0.33, 10),
                                                 (1.4, 44)])
def test_channel_rounding(alpha: float, expected: int) -> None:
    # TF-slim: max(int(c * alpha), 8); Keras: int(c * alpha)
    assert MobileNetConfig(width_mult=alpha).channels(32) == expected
    assert _meta(width_mult=alpha).stem.conv.out_channels == expected


def test_small_image_stem() -> None:
    model = MobileNetV1(width_mult=0.25, stem_stride=1, num_classes=10).eval()
    feats = model.forward_features(torch.randn(1, 3, 32, 32))
    assert feats.shape[-2:] == (2, 2)  # output stride 16 keeps 2x2 of a CIFAR image
    assert [f["reduction"] for f in model.feature_info] == [1, 2, 4, 8, 16]


def test_model_contract() -> None:
    model = MobileNetV1(width_mult=0.5).eval()
    assert [f["reduction"] for f in model.feature_info] == [2, 4, 8, 16, 32]
    assert [f["num_chs"] for f in model.feature_info] == [32, 64, 128, 256, 512]
    x = torch.randn(1, 3, 160, 160)
    stages = model.forward_stages(x)
    for f, s in zip(model.feature_info, stages, strict=True):
        assert s.shape == (1, f["num_chs"], 160 // f["reduction"], 160 // f["reduction"])
        assert model.get_submodule(f["module"]) is model.blocks[int(f["module"].split(".")[1])]
    feats = model.forward_features(x)
    assert torch.equal(feats, stages[-1])
    assert model.forward_head(feats, pre_logits=True).shape == (1, 512)
    assert torch.allclose(model(x), model.forward_head(feats))
    for preset in ("paper", "tf"):
        m = MobileNetV1(width_mult=0.25, preset=preset)
        m.reset_classifier(7)
        assert m(torch.randn(2, 3, 64, 64)).shape == (2, 7) and m.config.num_classes == 7
        m.reset_classifier(0)
        assert m(torch.randn(2, 3, 64, 64)).shape == (2, 256) and m.num_classes == 0


def test_init_is_slim_truncated_normal() -> None:
    model = MobileNetV1()
    w = model.blocks[12].pw.conv.weight  # 1M samples
    assert w.abs().max() <= 0.18 + 1e-6  # cut at 2 sigma
    # std of N(0, 0.09) truncated at +-2 sigma is 0.09 * 0.8796
    assert w.std().item() == pytest.approx(0.09 * 0.8796, rel=0.02)
    bn = model.stem.bn
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.bias, torch.zeros_like(bn.bias))


def test_trains_one_step() -> None:
    model = MobileNetV1(width_mult=0.25, num_classes=3)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_state_dict_keys_are_a_contract() -> None:
    keys = list(_meta().state_dict())
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    expected = ["stem.conv.weight"] + [f"stem.bn.{k}" for k in bn]
    for i in range(13):
        for part in ("dw", "pw"):
            expected += [f"blocks.{i}.{part}.conv.weight"] + [f"blocks.{i}.{part}.bn.{k}" for k in bn]
    expected += ["classifier.weight", "classifier.bias"]
    assert keys == expected
    assert keys[:8] == ["stem.conv.weight", "stem.bn.weight", "stem.bn.bias", "stem.bn.running_mean",
                        "stem.bn.running_var", "stem.bn.num_batches_tracked", "blocks.0.dw.conv.weight",
                        "blocks.0.dw.bn.weight"]
    assert list(_meta(preset="tf").state_dict()) == expected
    full = list(_meta(conv_type="full").state_dict())
    assert full[6:12] == ["blocks.0.conv.weight"] + [f"blocks.0.bn.{k}" for k in bn]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"width_mult": 0}, "width_mult must be > 0, got 0"),
    ({"width_mult": -0.5}, "width_mult must be > 0, got -0.5"),
    ({"resolution": 31}, "resolution must be an integer >= 32, got 31"),
    ({"resolution": 224.0}, "resolution must be an integer >= 32, got 224.0"),
    ({"num_classes": -1}, "num_classes must be an integer >= 0"),
    ({"dropout": 1.0}, "dropout must be in [0, 1), got 1.0"),
    ({"in_chans": 0}, "in_chans must be an integer >= 1, got 0"),
    ({"preset": "keras"}, "preset must be one of ['paper', 'tf', 'timm'], got 'keras'"),
    ({"conv_type": "dw"}, "conv_type must be 'separable' or 'full', got 'dw'"),
    ({"stem_stride": 4}, "stem_stride must be 1 or 2, got 4"),
])
def test_bad_arguments_say_what_was_received(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as e:
        MobileNetV1(**kwargs)
    assert message in str(e.value)


def test_keyword_only() -> None:
    with pytest.raises(TypeError):
        MobileNetV1(0.5)  # type: ignore[misc]


def test_bad_inputs() -> None:
    model = MobileNetV1(width_mult=0.25)
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 3, H, W\), got \(1, 1, 64, 64\)"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="at least 32x32 px, got \\(16, 64\\)"):
        model(torch.randn(1, 3, 16, 64))
    grey = MobileNetV1(width_mult=0.25, in_chans=1, num_classes=10).eval()
    assert grey(torch.randn(1, 1, 32, 32)).shape == (1, 10)


def test_config_round_trip() -> None:
    model = MobileNetV1(width_mult=0.75, resolution=160, num_classes=10, preset="tf", shallow=True)
    again = MobileNetV1.from_config(model.config.to_dict())
    assert again.config == model.config
    shapes = [tuple(v.shape) for v in model.state_dict().values()]
    assert [tuple(v.shape) for v in again.state_dict().values()] == shapes
    with pytest.raises(ValueError, match="unknown MobileNetConfig field"):
        MobileNetConfig.from_dict({"alpha": 1.0})
