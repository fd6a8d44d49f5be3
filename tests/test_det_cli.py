"""`mobilenet detect train|eval|predict|convert|export` end to end on a tiny generated set."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mobilenet.checkpoint import read_metadata
from mobilenet.cli import main
from mobilenet.detection.synthetic import SHAPE_CLASSES, make_shapes_voc
from tests.conftest import shared_file

CLASSES = ",".join(SHAPE_CLASSES)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_train_eval_predict_round_trip(tmp_path, capsys):
    data = make_shapes_voc(tmp_path / "shapes", num_train=16, num_test=4, image_size=64, seed=2)
    run = tmp_path / "run"
    assert main(["detect", "train", "--data", str(data), "--classes", CLASSES, "--val-split", "test",
                 "--width-mult", "0.25", "--image-size", "64", "--epochs", "2", "--batch-size", "8",
                 "--optimizer", "adamw", "--lr", "1e-3", "--out", str(run), "--workers", "0", "--quiet",
                 "--device", "cpu", "--no-tensorboard"]) == 0
    out = capsys.readouterr().out
    assert "epoch 2:" in out and "mAP" in out and (run / "last.safetensors").is_file()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2 and (run / "config.json").is_file()
    weights = str(run / "last.safetensors")

    metrics = tmp_path / "m.json"
    assert main(["detect", "eval", "--weights", weights, "--data", str(data), "--classes", CLASSES,
                 "--split", "test", "--json", str(metrics), "--device", "cpu"]) == 0
    assert "voc mAP:" in capsys.readouterr().out
    scored = json.loads(metrics.read_text())
    assert set(scored["per_class"]) == set(SHAPE_CLASSES)

    pics = tmp_path / "pics"
    images = data / "JPEGImages"
    test_images = [str(images / f"{i}.png") for i in (data / "ImageSets/Main/test.txt").read_text().split()]
    assert main(["detect", "predict", *test_images, "--weights", weights, "--out", str(pics), "--format", "json",
                 "--score-threshold", "0.0", "--device", "cpu"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 4 and all(r["detections"] for r in results)
    d = results[0]["detections"][0]
    assert set(d) == {"box", "score", "label", "class_id"} and d["label"] in SHAPE_CLASSES
    assert len(list(pics.glob("*.png"))) == 4 and (pics / "detections.json").is_file()  # PNG stays PNG

    # scoring saved predictions gives the same mAP as evaluating the model (same detections, rounded)
    metrics2 = tmp_path / "m2.json"
    assert main(["detect", "eval", "--predictions", str(pics / "detections.json"), "--data", str(data),
                 "--classes", CLASSES, "--split", "test", "--json", str(metrics2)]) == 0
    assert json.loads(metrics2.read_text())["map"] == pytest.approx(scored["map"], abs=1e-3)

    # resume continues the same run
    assert main(["detect", "train", "--data", str(data), "--classes", CLASSES, "--width-mult", "0.25",
                 "--image-size", "64", "--epochs", "3", "--batch-size", "8", "--optimizer", "adamw", "--out", str(run),
                 "--resume", "auto",
                 "--workers", "0", "--quiet", "--device", "cpu", "--no-tensorboard"]) == 0
    assert "resumed" in capsys.readouterr().out


def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    assert main(["detect", "eval", "--weights", "x.safetensors", "--data", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "VOC folder not found" in err
    assert main(["detect", "predict", str(tmp_path / "missing.jpg"), "--weights", "w.safetensors"]) == 2
    assert "image not found" in capsys.readouterr().err
    assert main(["detect", "export", "--weights", "w.safetensors", "--out", str(tmp_path / "m.onnx"), "--int8"]) == 2
    assert "--int8 needs --calib" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["detect"])  # a subcommand is required


@pytest.mark.realdata
def test_convert_and_predict_with_the_tflite_detector(tmp_path, capsys):
    src = shared_file("weights", "tflite", "detect.tflite")
    photo = shared_file("detection", "voc", "VOCdevkit", "VOC2012", "JPEGImages", "2007_000039.jpg")
    out = tmp_path / "coco_ssd.safetensors"
    assert main(["detect", "convert", str(src), "--out", str(out)]) == 0
    assert main(["detect", "predict", str(photo), "--weights", str(out), "--format", "json",
                 "--score-threshold", "0.5", "--device", "cpu"]) == 0
    dets = json.loads(capsys.readouterr().out.split("\n", 1)[1])[0]["detections"]
    assert {"tv", "keyboard"} <= {d["label"] for d in dets}  # a monitor and keyboard on a desk


@pytest.mark.slow  # one torch.onnx export of the 300x300 detector (~10 s)
@pytest.mark.realdata
def test_export_of_the_imported_coco_detector_matches_it_in_onnx_runtime(tmp_path, capsys):
    """The TF Lite COCO SSD (class-agnostic NMS, sigmoid scores, 10 detections) exported with its own settings:
    ONNX Runtime gives the same detections as SSD.detect on the real photos."""
    ort = pytest.importorskip("onnxruntime", reason="ONNX export needs onnxruntime")
    pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript")
    import numpy as np
    import onnx
    from PIL import Image

    from mobilenet.engine.detect import load_detector

    src = shared_file("weights", "tflite", "detect.tflite")
    photos = sorted(shared_file("detection", "voc", "VOCdevkit").glob("*/JPEGImages/*.jpg"))
    photos += sorted(shared_file("detection", "kitti", "training", "image_2").glob("*.png"))
    out = tmp_path / "coco_ssd.onnx"
    assert main(["detect", "export", "--weights", str(src), "--out", str(out)]) == 0
    assert "class-agnostic NMS, sigmoid scores" in capsys.readouterr().out
    meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["mobilenet"])
    assert meta["nms"] == "class_agnostic" and meta["postprocess"]["max_detections"] == 10
    assert meta["class_names"][:3] == ["person", "bicycle", "car"]

    model = load_detector(str(src))
    mean, std = model.config.pixel_mean[0], model.config.pixel_std[0]
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB").resize((300, 300)), np.float32))
                     .permute(2, 0, 1) for p in photos]).sub(mean).div(std)
    (dets,) = ort.InferenceSession(str(out)).run(None, {"input": x.numpy()})
    ours = model.detect(x)
    assert len(photos) == 14 and len(dets) == sum(len(d.scores) for d in ours) == 14 * 10
    for b, d in enumerate(ours):
        rows = dets[dets[:, 0] == b]
        assert rows[:, 6].tolist() == d.labels.tolist()  # same classes in the same (score) order
        np.testing.assert_allclose(rows[:, 5], d.scores.numpy(), atol=1e-4)
        np.testing.assert_allclose(rows[:, 1:5], d.boxes.numpy(), atol=1e-4)


def test_train_print_config_resolves_recipe_then_flags(capsys):
    assert main(["detect", "train", "--config", str(CONFIGS / "ssd_voc.toml"), "--print-config", "--lr", "0.5",
                 "--no-augment", "--loss", "focal"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["lr"] == 0.5 and cfg["augment"] is False and cfg["classification"] == "focal"  # flags
    assert cfg["batch_size"] == 24 and cfg["image_size"] == 300 and cfg["workers"] == 4  # recipe
    assert main(["detect", "train", "--config", str(CONFIGS / "ssd_voc.toml")]) == 2  # no --data
    assert "--data is required (or data = ... in the --config recipe)" in capsys.readouterr().err


@pytest.mark.realdata
@pytest.mark.parametrize("name, data", [("ssd_voc", ("detection", "voc", "VOCdevkit")),
                                        ("ssd_kitti", ("detection", "kitti", "training"))])
def test_recipe_trains_one_step_on_the_shared_samples(tmp_path, capsys, name, data):
    """Each configs/ssd_*.toml runs as written (only smaller: α 0.25, one epoch) on the real samples."""
    root = shared_file(*data)
    run = tmp_path / "run"
    assert main(["detect", "train", "--config", str(CONFIGS / f"{name}.toml"), "--data", str(root), "--out", str(run),
                 "--epochs", "1", "--width-mult", "0.25", "--workers", "0", "--quiet", "--device", "cpu",
                 "--no-tensorboard"]) == 0
    capsys.readouterr()
    (record,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(record["train_loss"]) and record["train_loss"] > 0
    state = json.loads(next((run / "states").glob("*/state.json")).read_text())["config"]
    assert state["optimizer"] == "rmsprop_tf" and state["neg_pos_ratio"] == 3.0
    expected = {"ssd_voc": [300, 300], "ssd_kitti": [384, 1248]}[name]
    assert read_metadata(run / "last.safetensors")["config"]["image_size"] == expected
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["epochs"] == 1 and resolved["width_mult"] == 0.25 and resolved["data"] == str(root)
    if name == "ssd_kitti":
        assert "map" in record  # val split evaluated with the KITTI metric


@pytest.mark.slow  # a torch.onnx export and an int8 calibration of the 300x300 detector (~20 s)
@pytest.mark.realdata
def test_int8_export_of_the_imported_coco_detector_keeps_its_detections(tmp_path, capsys):
    """`detect export --int8`: int8 convs calibrated on 16 ImageNet photos; on the 14 VOC/KITTI photos the int8
    graph finds the float detector's confident detections (same class, IoU >= 0.5)."""
    pytest.importorskip("onnxruntime.quantization")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript")
    from PIL import Image

    from mobilenet.detection.export import onnx_detections
    from mobilenet.detection.predict import model_input
    from mobilenet.engine.detect import load_detector
    from mobilenet.tflite.parity import Parity, match_detections

    src = shared_file("weights", "tflite", "detect.tflite")
    calib = sorted(shared_file("imagenet", "images").iterdir())[:16]
    photos = sorted(shared_file("detection", "voc", "VOCdevkit").glob("*/JPEGImages/*.jpg"))
    photos += sorted(shared_file("detection", "kitti", "training", "image_2").glob("*.png"))
    out = tmp_path / "int8.onnx"
    assert main(["detect", "export", "--weights", str(src), "--out", str(out), "--int8", "--calib",
                 *map(str, calib)]) == 0
    assert "int8 convs" in capsys.readouterr().out
    model = load_detector(str(src))
    x = torch.stack([model_input(Image.open(p), model) for p in photos])
    (dets,) = ort.InferenceSession(str(out)).run(None, {"input": x.numpy()})
    found = Parity()
    for p, ref, ours in zip(photos, model.detect(x), onnx_detections(dets, len(photos)), strict=True):
        match_detections(ref, ours, found, p.name, min_iou=0.5, score_tol=1.0)  # found at any score
    assert found.references >= 20 and found.rate >= 0.85, found.misses  # measured 35 of 37
