"""BN folding: equivalence (both presets), structure, folded weights files, static view, `mobilenet fold`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mobilenet
from mobilenet.cli import main
from mobilenet.deploy import fold_bn, freeze_same_padding, load_folded, save_folded, static_model
from mobilenet.deploy.fold import fold_conv_bn
from mobilenet.model import SamePad2d


def _with_bn_stats(model: nn.Module) -> nn.Module:
    # Non-trivial BatchNorm: random affine parameters and running statistics far from (0, 1).
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = torch.rand(c, generator=g) + 0.5
            m.bias.data = torch.randn(c, generator=g) * 0.1
            m.running_mean = torch.randn(c, generator=g) * 0.2
            m.running_var = torch.rand(c, generator=g) + 0.5
    return model.eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("preset", ["paper", "tf"])
def test_folded_equals_unfolded_in_eval_mode(preset):
    model = _with_bn_stats(mobilenet.create_model("mobilenet_v1_050_128", preset=preset, resolution=64))
    folded = fold_bn(model)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert _rel(folded(x), model(x)) <= 1e-5
        # any input size, including odd ones where SAME padding is symmetric
        y = torch.randn(1, 3, 45, 39)
        assert _rel(folded(y), model(y)) <= 1e-5
    # the caller's model is untouched and keeps its BatchNorms
    assert isinstance(model.stem.bn, nn.BatchNorm2d)


def test_fold_keeps_structure_and_drops_bn():
    model = _with_bn_stats(mobilenet.create_model("mobilenet_v1_025_128", preset="tf"))
    folded = fold_bn(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert isinstance(folded.blocks[1].dw.pad, SamePad2d) and isinstance(folded.blocks[1].dw.act, nn.ReLU6)
    keys = set(folded.state_dict())
    assert {"stem.conv.weight", "stem.conv.bias", "blocks.12.pw.conv.bias", "classifier.weight"} <= keys
    assert not any(".bn." in k for k in keys)
    with pytest.raises(ValueError, match="no \\(conv, bn\\) pair"):
        fold_bn(folded)


def test_fold_conv_bn_with_conv_bias_and_bad_pairs():
    conv, bn = nn.Conv2d(4, 6, 3, padding=1, bias=True), nn.BatchNorm2d(6)
    _with_bn_stats(bn)
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        assert _rel(fold_conv_bn(conv, bn)(x), bn(conv(x))) <= 1e-5
    with pytest.raises(ValueError, match="6 channels"):
        fold_conv_bn(nn.Conv2d(4, 5, 1), bn)
    with pytest.raises(TypeError, match="Linear"):
        fold_conv_bn(nn.Linear(2, 2), bn)  # type: ignore[arg-type]


def test_folded_weights_file_round_trip(tmp_path):
    model = _with_bn_stats(mobilenet.create_model("mobilenet_v1_025_128", resolution=64, num_classes=7))
    folded = fold_bn(model)
    path = save_folded(folded, tmp_path / "folded.safetensors", class_names=list("abcdefg"))
    loaded = mobilenet.load(path)  # through the checkpoint registry
    assert getattr(loaded, "bn_folded", False) and loaded.weights_info.classes == list("abcdefg")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), folded(x))
    # an ordinary file is folded on the fly
    plain = mobilenet.save(model, tmp_path / "plain.safetensors")
    with torch.no_grad():
        assert _rel(load_folded(plain)(x), model(x)) <= 1e-5
    with pytest.raises(TypeError, match="fold_bn"):
        save_folded(model, tmp_path / "x.safetensors")


@pytest.mark.parametrize("preset", ["paper", "tf"])
def test_static_model_matches_and_freezes_padding(preset):
    model = _with_bn_stats(mobilenet.create_model("mobilenet_v1_025_128", preset=preset, resolution=64))
    static = static_model(model)
    assert not any(isinstance(m, SamePad2d) for m in static.modules())
    if preset == "tf":
        assert static.blocks[1].dw.pad.padding == (0, 1, 0, 1)  # even input, stride 2: TF pads bottom/right
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(static(x), model(x), atol=1e-6)
    if preset == "tf":  # the caller's model keeps its dynamic padding
        assert isinstance(model.blocks[1].dw.pad, SamePad2d)


def test_freeze_padding_does_not_touch_bn_statistics():
    model = mobilenet.create_model("mobilenet_v1_025_128", preset="tf", resolution=64).train()
    before = model.stem.bn.running_mean.clone()
    freeze_same_padding(model, 64)
    assert model.training and torch.equal(model.stem.bn.running_mean, before)


def test_cli_fold(tmp_path, capsys):
    model = _with_bn_stats(mobilenet.create_model("mobilenet_v1_025_128", resolution=64))
    src = mobilenet.save(model, tmp_path / "m.safetensors")
    out = tmp_path / "f.safetensors"
    assert main(["fold", str(src), "-o", str(out)]) == 0
    assert "max relative difference" in capsys.readouterr().out
    assert main(["fold", str(out), "-o", str(tmp_path / "g.safetensors")]) == 2
    assert "already folded" in capsys.readouterr().err
    assert main(["fold", str(tmp_path / "missing.safetensors"), "-o", str(out)]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "junk.safetensors").write_bytes(b"not a weights file")
    assert main(["fold", str(tmp_path / "junk.safetensors"), "-o", str(out)]) == 2
