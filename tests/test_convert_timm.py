"""timm and Hugging Face MobileNet v1 state dicts: key mapping on synthetic files, and against timm itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from benchmarks.timm_peer import timm_available
from mobilenet.convert import detect_format, import_model
from mobilenet.model import MobileNetV1
from tests.convert_writers import hf_state, randomize_bn, timm_state


def test_timm_safetensors_equals_source(tmp_path):
    model = randomize_bn(MobileNetV1(width_mult=0.25, num_classes=1000, preset="timm"))
    path = tmp_path / "mobilenetv1_100.safetensors"
    save_file(timm_state(model), str(path))
    assert detect_format(path) == "timm"
    ours = import_model(path)
    assert ours.config.preset == "timm" and ours.weights_info.source.details["layout"] == "timm"
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), model(x), rtol=0, atol=1e-5)


def test_timm_head_conv_variant_is_refused(tmp_path):
    state = timm_state(MobileNetV1(width_mult=0.25, num_classes=10, preset="timm"))
    state["conv_head.weight"] = torch.zeros(256, 256, 1, 1)
    path = tmp_path / "m.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="conv_head"):
        import_model(path, format="timm")


def test_huggingface_layout_equals_source(tmp_path):
    model = randomize_bn(MobileNetV1(width_mult=0.25, num_classes=1001, preset="tf"))
    path = tmp_path / "pytorch_model.bin"
    torch.save(hf_state(model), path)
    ours = import_model(path)
    assert ours.config.preset == "tf" and ours.weights_info.source.details["layout"] == "huggingface"
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), model(x), rtol=0, atol=1e-5)


def test_foreign_state_dict_names_its_keys(tmp_path):
    path = tmp_path / "resnet.safetensors"
    save_file({"fc.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ValueError, match="neither a timm .* first keys: \\['fc.weight'\\]"):
        import_model(path)


@pytest.mark.slow
@pytest.mark.parametrize("name, resolution", [("mobilenetv1_100", 224), ("mobilenetv1_125", 160)])
def test_real_timm_model_equals_import(tmp_path, name, resolution):
    """timm's own model code (random weights, BN statistics randomized) against our import of its state dict.

    timm runs in a child process (tests/timm_reference.py) because, without torchvision, it needs stand-in
    modules for the data transforms it imports; skips when timm is not found (`make test` puts its model code in
    <venv>/timm-reference, see benchmarks/timm_peer.py).
    """
    if not timm_available():
        pytest.skip("timm not found (`make test` installs its model code in <venv>/timm-reference)")
    script = Path(__file__).with_name("timm_reference.py")
    subprocess.run([sys.executable, str(script), str(tmp_path), "--model", name, "--resolution", str(resolution)],
                   check=True, capture_output=True, text=True)
    ref = load_file(str(tmp_path / "io.safetensors"))
    cfg = json.loads((tmp_path / "pretrained_cfg.json").read_text())
    ours = import_model(tmp_path / "model.safetensors", resolution=resolution)
    assert ours.config.width_mult == float(name[-3:]) / 100 and ours.num_classes == cfg["num_classes"]
    pre = ours.weights_info.preprocessing
    assert (pre.interpolation, pre.crop_fraction) == (cfg["interpolation"], cfg["crop_pct"])
    assert [m / 255 for m in pre.mean] == cfg["mean"] and [s / 255 for s in pre.std] == cfg["std"]
    with torch.no_grad():
        torch.testing.assert_close(ours(ref["x"]), ref["logits"], rtol=0, atol=1e-5)
