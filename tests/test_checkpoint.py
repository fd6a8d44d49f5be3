"""Weights files: safetensors + metadata, strict loading, atomic writes, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import mobilenet
from mobilenet.checkpoint import WeightsFileError, atomic_write, read
from mobilenet.preprocessing import Preprocessing


@pytest.mark.parametrize("preset", ["paper", "tf"])
def test_save_load_round_trip(tmp_path: Path, preset: str) -> None:
    model = mobilenet.create_model("mobilenet_v1_025_128", preset=preset, num_classes=5).eval()
    for m in model.modules():  # non-trivial BN statistics must survive too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    path = mobilenet.save(model, tmp_path / "w.safetensors", class_names=list("abcde"),
                          preprocessing=Preprocessing.tf(128), extra={"note": "test"})
    again = mobilenet.load(path)
    assert not again.training
    assert again.config == model.config
    x = torch.randn(2, 3, 128, 128)
    with torch.inference_mode():
        assert torch.equal(again(x), model(x))
    info = again.weights_info
    assert info.classes == list("abcde")
    assert info.preprocessing == Preprocessing.tf(128)
    assert info.extra == {"note": "test"} and mobilenet.checkpoint.read_metadata(path)["architecture"] == "mobilenet_v1"


def test_default_preprocessing_and_create_model_weights(tmp_path: Path) -> None:
    model = mobilenet.create_model("mobilenet_v1_025_160", num_classes=3)
    path = mobilenet.save(model, tmp_path / "w.safetensors")
    _, meta = read(path)
    assert meta["preprocessing"]["resolution"] == 160
    again = mobilenet.create_model("mobilenet_v1_025_160", num_classes=3, weights=str(path))
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values(),
                                                 strict=True))


def test_create_model_takes_the_rest_of_the_config_from_the_file(tmp_path: Path) -> None:
    slim_like = mobilenet.create_model("mobilenet_v1_025_128", preset="tf", num_classes=1001)
    path = mobilenet.save(slim_like, tmp_path / "slim.safetensors")
    again = mobilenet.create_model("mobilenet_v1_025_128", weights=str(path))
    assert (again.config.preset, again.config.num_classes) == ("tf", 1001)
    assert mobilenet.create_model("mobilenet_v1_025_224", weights=str(path)).config.resolution == 224
    with pytest.raises(WeightsFileError, match="width_mult=0.25 model: mobilenet_v1_050_128 with width_mult=0.5"):
        mobilenet.create_model("mobilenet_v1_050_128", weights=str(path))


def test_file_is_plain_safetensors_without_pickle(tmp_path: Path) -> None:
    path = mobilenet.save(mobilenet.MobileNetV1(width_mult=0.25), tmp_path / "w.safetensors")
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8:8 + header_len])
    meta = json.loads(header["__metadata__"]["mobilenet"])
    assert meta["config"]["width_mult"] == 0.25
    assert "stem.conv.weight" in header


def test_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(WeightsFileError, match="weights file not found"):
        mobilenet.load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(WeightsFileError, match="not a readable safetensors file"):
        mobilenet.load(junk)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(WeightsFileError, match="not written by mobilenet"):
        mobilenet.load(foreign)
    small = mobilenet.save(mobilenet.MobileNetV1(width_mult=0.25), tmp_path / "small.safetensors")
    with pytest.raises(WeightsFileError, match=r"holds a width_mult=0.25 model: .* width_mult=0.5 cannot load it"):
        mobilenet.create_model("mobilenet_v1_050_224", weights=str(small))
    with pytest.raises(WeightsFileError, match=r"holds a shallow=False model: .* with shallow=True cannot load it"):
        mobilenet.create_model("mobilenet_v1_025_224", shallow=True, weights=str(small))


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with atomic_write(target) as f:
        f.write(b"old")
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write(b"half-writ")
        raise RuntimeError("crash mid-save")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # no temporary file left behind
