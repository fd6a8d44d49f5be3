"""The Keras/timm-style helpers at the top level: preprocess, decode_predictions, resolve_data_config."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mobilenet
from mobilenet.convert import import_model
from mobilenet.data.decode import read_image
from mobilenet.predict import predict
from mobilenet.preprocessing import Preprocessing
from mobilenet.weights import WeightsInfo
from tests.conftest import shared_file


def _photo(path: Path, size: tuple[int, int] = (90, 60), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_preprocess_is_the_weights_own_pipeline(tmp_path: Path) -> None:
    model = mobilenet.create_model("mobilenet_v1_025_128", num_classes=3)
    tf = Preprocessing.tf(96)
    model.weights_info = WeightsInfo(preprocessing=tf)
    a, b = _photo(tmp_path / "a.png"), _photo(tmp_path / "b.jpg", (50, 70), seed=1)
    expected = torch.stack([tf(read_image(a)), tf(read_image(b))])
    assert torch.equal(mobilenet.preprocess([a, b], model), expected)
    assert expected.shape == (2, 3, 96, 96) and expected.min() >= -1 and expected.max() <= 1  # TF's [-1, 1]
    # one file, a PIL image, an (H, W, 3) array and an (N, H, W, 3) array (Keras' layout) are the same image
    pixels = np.asarray(read_image(a))
    for same in (a, str(a), Image.open(a), pixels, pixels[None], pixels.astype(np.float32)):
        assert torch.equal(mobilenet.preprocess(same, model), expected[:1])
    # without a record: ImageNet's convention at the model's resolution
    bare = mobilenet.create_model("mobilenet_v1_025_160")
    assert torch.equal(mobilenet.preprocess(a, bare)[0], Preprocessing.imagenet(160)(read_image(a)))
    with pytest.raises(ValueError, match=r"an image array must be \(H, W, 3\)"):
        mobilenet.preprocess(np.zeros((4, 4)), model)
    with pytest.raises(ValueError, match="no images"):
        mobilenet.preprocess([], model)


def test_decode_predictions_names_and_orders_the_classes() -> None:
    model = mobilenet.create_model("mobilenet_v1_025_128", num_classes=4)
    model.weights_info = WeightsInfo(classes=["n1", "n2", "n3", "n4"], class_labels=["cat", "dog", "fox", "owl"])
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 1.0, 0.0]])
    rows = mobilenet.decode_predictions(logits, model, top=2)
    assert [[e["name"] for e in r] for r in rows] == [["dog", "owl"], ["cat", "fox"]]
    first = rows[0][0]
    assert (first["label"], first["index"]) == ("n2", 1)
    assert math.isclose(first["prob"], float(logits[0].softmax(0)[1]), rel_tol=1e-6)
    # one image as a 1-D vector or a numpy array; top beyond the classes gives them all
    assert mobilenet.decode_predictions(logits[0].numpy(), model, top=10)[0] == \
        mobilenet.decode_predictions(logits[:1], model, top=4)[0]
    plain = mobilenet.create_model("mobilenet_v1_025_128", num_classes=3)  # no names: the indices
    assert [e["label"] for e in mobilenet.decode_predictions(torch.tensor([1.0, 2.0, 3.0]), plain)[0]] == \
        ["2", "1", "0"]
    assert "name" not in mobilenet.decode_predictions(torch.tensor([1.0, 2.0, 3.0]), plain)[0][0]
    with pytest.raises(ValueError, match="non-finite outputs"):
        mobilenet.decode_predictions(torch.tensor([[float("nan"), 0.0, 0.0]]), plain)
    with pytest.raises(ValueError, match="top must be >= 1"):
        mobilenet.decode_predictions(logits, model, top=0)


def test_resolve_data_config_speaks_timms_keys() -> None:
    model = mobilenet.create_model("mobilenet_v1_050_160")
    assert mobilenet.resolve_data_config(model) == {
        "input_size": (3, 160, 160), "interpolation": "bilinear", "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225), "crop_pct": 0.875, "crop_mode": "resize_crop", "channel_order": "RGB"}
    model.weights_info = WeightsInfo(preprocessing=Preprocessing.tf(160))
    cfg = mobilenet.resolve_data_config(model)
    assert cfg["mean"] == cfg["std"] == (0.5, 0.5, 0.5) and cfg["crop_mode"] == "crop_resize"


def test_helpers_agree_with_predict_on_the_imported_tflite_model() -> None:
    model = import_model(shared_file("weights", "tflite", "mobilenet_v1_0.25_128_quant.tflite"))
    photo = shared_file("imagenet", "images", "n01440764_tench.JPEG")
    assert mobilenet.resolve_data_config(model)["input_size"] == (3, 128, 128)
    with torch.no_grad():
        top = mobilenet.decode_predictions(model(mobilenet.preprocess(photo, model)), model, top=3)[0]
    assert top == predict(model, [photo], topk=3)[0]["top"]
    assert top[0]["label"] == "n01440764" and top[0]["name"].startswith("tench")
