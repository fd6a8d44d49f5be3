"""Caffe MobileNet: a caffemodel written from the public caffe.proto field numbers, imported, outputs equal."""

from __future__ import annotations

import pytest
import torch

from mobilenet.convert import detect_format, import_model
from mobilenet.convert.caffe import parse_prototxt
from mobilenet.model import MobileNetV1
from tests.convert_writers import randomize_bn, write_caffe


@pytest.fixture
def caffe_files(tmp_path):
    model = randomize_bn(MobileNetV1(width_mult=0.25, num_classes=1000, preset="paper"))
    return model, *write_caffe(model, tmp_path / "mobilenet.caffemodel")


def test_caffe_import_equals_source(caffe_files):
    model, caffemodel, deploy = caffe_files
    assert detect_format(caffemodel) == "caffe"
    ours = import_model(caffemodel, prototxt=deploy)
    assert ours.config.preset == "paper" and ours.config.width_mult == 0.25 and ours.num_classes == 1000
    pre = ours.weights_info.preprocessing
    assert pre.channel_order == "BGR" and list(pre.mean) == [103.94, 116.78, 123.68]
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), model(x), rtol=0, atol=1e-5)


def test_caffe_bn_eps_from_the_file_is_kept(tmp_path):
    model = randomize_bn(MobileNetV1(width_mult=0.25, num_classes=0, preset="paper"))
    caffemodel, _ = write_caffe(model, tmp_path / "m.caffemodel", eps=1e-3)
    ours = import_model(caffemodel)
    # ours divides by sqrt(var' + 1e-5); the file meant sqrt(var + 1e-3): var' = var + 1e-3 - 1e-5
    torch.testing.assert_close(ours.stem.bn.running_var, model.stem.bn.running_var + (1e-3 - 1e-5))


def test_prototxt_that_disagrees_is_named(caffe_files, tmp_path):
    _, caffemodel, deploy = caffe_files
    bad = tmp_path / "bad.prototxt"
    bad.write_text(deploy.read_text().replace('"conv3_1/dw"', '"conv3_1/dwX"'))
    with pytest.raises(ValueError, match="disagree at convolution #5: 'conv3_1/dwX' vs 'conv3_1/dw'"):
        import_model(caffemodel, prototxt=bad)


def test_parse_prototxt_blocks():
    text = 'name: "x"\nlayer {\n  name: "c" # comment\n  type: "Convolution"\n  convolution_param { stride: 2 }\n}\n'
    assert parse_prototxt(text) == [{"name": "c", "type": "Convolution", "convolution_param.stride": "2"}]


def test_corrupt_caffemodel(tmp_path):
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(b"\x0a\xff\xff\xff\x0f")  # field 1, length far past the end
    with pytest.raises(ValueError, match="not a readable .caffemodel"):
        import_model(bad)
