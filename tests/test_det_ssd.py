"""The SSD model: layout, input sizes, SSDLite, saving and loading, fine-tuning heads."""

from __future__ import annotations

import pytest
import torch

import mobilenet
from mobilenet.checkpoint import LAZY_BUILDERS
from mobilenet.detection import SSD, SSDConfig


def test_ssd_mobilenet_v1_layout_at_300():
    m = SSD(SSDConfig(num_classes=90, width_mult=0.25)).eval()
    assert m.feature_sizes((300, 300)) == [(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    assert m.num_anchors == [3, 6, 6, 6, 6, 6]
    box, logits = m(torch.randn(2, 3, 300, 300))
    assert box.shape == (2, 1917, 4) and logits.shape == (2, 1917, 91)
    assert m.anchors().shape == (1917, 4)


def test_extra_layer_depths_follow_tf_depth_fn():
    m = SSD(SSDConfig(num_classes=3, width_mult=0.75))
    # TF's detect.tflite (alpha 0.75): 1x1 192 -> 3x3 384, 96 -> 192, 96 -> 192, 48 -> 96
    got = [(e.reduce.conv.out_channels, e.conv.conv.out_channels) for e in m.extras]
    assert got == [(192, 384), (96, 192), (96, 192), (48, 96)]
    small = SSD(SSDConfig(num_classes=3, width_mult=0.1))
    assert min(e.reduce.conv.out_channels for e in small.extras) == 16  # min_depth


def test_state_dict_keys_are_stable():
    keys = list(SSD(SSDConfig(num_classes=3, width_mult=0.25)).state_dict())
    for k in ("backbone.stem.conv.weight", "backbone.blocks.12.pw.bn.running_var", "extras.0.reduce.conv.weight",
              "extras.3.conv.bn.bias", "box_heads.0.weight", "cls_heads.5.bias"):
        assert k in keys
    assert not any(k.startswith("backbone.classifier") for k in keys)


def test_wide_kitti_input_and_ssdlite():
    m = SSD(SSDConfig(num_classes=3, width_mult=0.25, image_size=(192, 640), ssdlite=True)).eval()
    sizes = m.feature_sizes((192, 640))
    assert sizes[0] == (12, 40) and sizes[-1][0] == 1
    box, logits = m(torch.randn(1, 3, 192, 640))
    assert box.shape[1] == logits.shape[1] == m.anchors().shape[0]
    assert any(mod.groups > 1 for mod in m.extras.modules() if isinstance(mod, torch.nn.Conv2d))
    dets = m.detect(torch.randn(1, 3, 192, 640))
    assert len(dets) == 1 and dets[0].boxes.shape[1] == 4


def test_save_and_load_round_trip(tmp_path):
    assert "ssd_mobilenet_v1" in LAZY_BUILDERS  # load finds the builder without importing detection first
    m = SSD(SSDConfig(num_classes=2, width_mult=0.25, image_size=(96, 128), head_kernel_size=3)).eval()
    path = mobilenet.save(m, tmp_path / "ssd.safetensors", class_names=["a", "b"])
    back = mobilenet.load(path)
    assert isinstance(back, SSD) and back.config == m.config
    assert back.weights_info.classes == ["a", "b"]
    x = torch.randn(1, 3, 96, 128)
    assert torch.equal(back(x)[1], m(x)[1])


def test_reset_classes_keeps_box_predictors():
    m = SSD(SSDConfig(num_classes=90, width_mult=0.25)).eval()
    before = m.box_heads[0].weight.clone()
    m.reset_classes(3)
    assert m.config.num_classes == 3 and torch.equal(m.box_heads[0].weight, before)
    assert m(torch.randn(1, 3, 300, 300))[1].shape == (1, 1917, 4)


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match="num_classes"):
        SSDConfig(num_classes=0)
    with pytest.raises(ValueError, match="image_size"):
        SSDConfig(image_size=(16, 300))
