"""TF-slim checkpoints: written by a spec-following writer, imported without TensorFlow, outputs equal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mobilenet.checkpoint import load
from mobilenet.convert import convert, detect_format, import_model
from mobilenet.convert.tf_checkpoint import CheckpointError, read_checkpoint
from mobilenet.model import MobileNetV1
from tests.convert_writers import randomize_bn, slim_variables, write_tf_checkpoint


@pytest.fixture
def slim_ckpt(tmp_path):
    model = randomize_bn(MobileNetV1(width_mult=0.25, resolution=128, num_classes=1001, preset="tf"))
    prefix = write_tf_checkpoint(tmp_path / "mobilenet_v1_0.25_128.ckpt", slim_variables(model))
    return model, prefix


def test_checkpoint_reader_round_trip(tmp_path):
    tensors = {"a/b": np.arange(6, dtype=np.float32).reshape(2, 3), "step": np.array(7, dtype=np.int64)}
    prefix = write_tf_checkpoint(tmp_path / "x.ckpt", tensors)
    got = read_checkpoint(f"{prefix}.index")
    assert set(got) == set(tensors)
    np.testing.assert_array_equal(got["a/b"], tensors["a/b"])
    assert got["step"] == 7


def test_slim_import_equals_source(slim_ckpt, tmp_path):
    model, prefix = slim_ckpt
    assert detect_format(f"{prefix}.index") == "slim" and detect_format(prefix) == "slim"
    out = convert(f"{prefix}.index", tmp_path / "ours.safetensors")
    ours = load(out)
    info = ours.weights_info
    assert ours.config.resolution == 128 and ours.config.width_mult == 0.25 and ours.config.num_classes == 1001
    assert info.classes[0] == "background" and len(info.classes) == 1001
    assert info.preprocessing.mean == (127.5,) * 3 and info.preprocessing.crop_mode == "crop_resize"
    assert info.source.format == "slim"
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), model(x), rtol=0, atol=1e-5)


def test_slim_drop_background(slim_ckpt):
    model, prefix = slim_ckpt
    ours = import_model(prefix, drop_background=True)
    info = ours.weights_info
    assert ours.num_classes == 1000 and info.classes[0] == "n01440764"
    assert info.class_labels[0].startswith("tench")
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), model(x)[:, 1:], rtol=0, atol=1e-5)


def test_slim_missing_variable_is_named(tmp_path):
    model = MobileNetV1(width_mult=0.25, num_classes=0, preset="tf")
    variables = slim_variables(model)
    del variables["MobilenetV1/Conv2d_7_pointwise/BatchNorm/moving_mean"]
    prefix = write_tf_checkpoint(tmp_path / "broken.ckpt", variables)
    with pytest.raises(ValueError, match="Conv2d_7_pointwise/BatchNorm/moving_mean"):
        import_model(prefix)


def test_slim_wrong_width_is_refused(slim_ckpt):
    _, prefix = slim_ckpt
    with pytest.raises(ValueError, match="width-0.25 .*width_mult=0.5"):
        import_model(prefix, width_mult=0.5)


def test_corrupt_index_is_refused(tmp_path):
    (tmp_path / "bad.ckpt.index").write_bytes(b"not a table" * 10)
    with pytest.raises(CheckpointError, match="not a TensorFlow checkpoint index"):
        read_checkpoint(tmp_path / "bad.ckpt")
