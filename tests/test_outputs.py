"""Consistent, valid outputs: no NaN in any JSON we write, and the same run folder from classification and detection."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest

from mobilenet.detection import SSD, SSDConfig
from mobilenet.detection.datasets import read_voc
from mobilenet.detection.synthetic import SHAPE_CLASSES, make_shapes_voc
from mobilenet.engine.classify import fit
from mobilenet.engine.detect import fit_detector
from mobilenet.recipe import DetectConfig
from mobilenet.strict_json import dumps
from tests.conftest import REPO, shared_file
from tests.test_train import CLASSES, tiny_cfg, tiny_data

# Modules that may call json.dump(s) directly: they write headers and configs of our own making (weights metadata,
# export metadata, recipes, lock files), never measured numbers. Everything else writes results through
# mobilenet.strict_json, which turns NaN and infinities into null.
METADATA_WRITERS = {
    "mobilenet/checkpoint.py", "mobilenet/train_state.py", "mobilenet/recipe.py", "mobilenet/embed.py",
    "mobilenet/deploy/quantize.py", "mobilenet/detection/export.py", "mobilenet/strict_json.py",
    "mobilenet/export/onnx.py", "mobilenet/export/pytorch.py", "mobilenet/export/executorch.py",
    "mobilenet/export/coreml.py", "mobilenet/export/openvino.py", "mobilenet/export/tflite.py",
    "mobilenet/cli/train.py", "mobilenet/cli/detect/train.py", "mobilenet/cli/models.py", "mobilenet/cli/profile.py",
}


def _json_writes(path: Path) -> list[int]:
    """Line numbers of json.dump / json.dumps calls in a source file."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("dump", "dumps")
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "json"):
            lines.append(node.lineno)
    return lines


def test_results_are_written_as_strict_json() -> None:
    raw = {f"{p.relative_to(REPO)}:{n}" for p in sorted((REPO / "mobilenet").rglob("*.py"))
           for n in _json_writes(p) if str(p.relative_to(REPO)) not in METADATA_WRITERS}
    assert not raw, ("these write JSON with Python's json, which writes NaN (not JSON): use mobilenet.strict_json, "
                     "or list the module in METADATA_WRITERS if it only writes metadata:\n" + "\n".join(sorted(raw)))
    assert json.loads(dumps({"ap": float("nan"), "rows": [1.0, float("inf")]})) == {"ap": None, "rows": [1.0, None]}


def test_classification_and_detection_write_the_same_run_folder(tmp_path: Path) -> None:
    fit(tiny_cfg(tmp_path / "cls", epochs=1, curves=True), train_set=tiny_data(), val_set=tiny_data(),
        class_names=CLASSES)
    root = make_shapes_voc(tmp_path / "shapes", num_train=8, num_test=2, image_size=64, seed=2)
    model = SSD(SSDConfig(num_classes=3, width_mult=0.25, image_size=(64, 64)))
    fit_detector(DetectConfig(epochs=1, batch_size=8, optimizer="sgd", lr=1e-3, device="cpu", tensorboard=False,
                              out=str(tmp_path / "det")), model=model,
                 train_set=read_voc(root, "trainval", SHAPE_CLASSES), val_set=read_voc(root, "test", SHAPE_CLASSES))

    def files(run: Path) -> set[str]:
        return {p.name for p in run.iterdir() if p.name != "tb" and not p.name.startswith(".")}  # .lock: the run lock

    classification, detection = files(tmp_path / "cls" / "run"), files(tmp_path / "det")
    assert classification == detection == {"config.json", "metrics.jsonl", "curves.png", "states", "last.safetensors",
                                           "best.safetensors"}, (classification, detection)
    for run in (tmp_path / "cls" / "run", tmp_path / "det"):
        for line in (run / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)  # strict JSON: no NaN token (a mAP over classes without ground truth is null)
            assert all(not isinstance(v, float) or math.isfinite(v) for v in row.values())


def test_class_names_match_one_way_for_models_and_saved_predictions(tmp_path: Path) -> None:
    from mobilenet.detection.labels import class_index, parse_label_map
    from mobilenet.detection.predict import read_predictions

    kitti = ["Car", "Pedestrian", "Cyclist"]
    assert class_index(["car", "person", "bicycle", "cup"], kitti) == [0, -1, -1, -1]  # case
    assert class_index(["car", "person", "bicycle"], kitti, {"person": "Pedestrian", "bicycle": "Cyclist"}) == [0, 1, 2]
    assert class_index(["tv", "couch", "dining table"], ["sofa", "tvmonitor", "diningtable"]) == [1, 0, 2]  # VOC
    assert parse_label_map("person=Pedestrian, bicycle=Cyclist") == {"person": "Pedestrian", "bicycle": "Cyclist"}
    (tmp_path / "map.json").write_text('{"person": "Pedestrian"}')
    assert parse_label_map(str(tmp_path / "map.json")) == {"person": "Pedestrian"}
    for bad, match in (("person", "NAME=DATASET_NAME|name=dataset_name"), ("a=b=c", "pairs")):
        with pytest.raises(ValueError, match=match):
            parse_label_map(bad)
    with pytest.raises(ValueError, match="the label map names 'Truck', not a class of the dataset"):
        class_index(["car"], kitti, {"car": "Truck"})
    # saved predictions: the same rule; classes the dataset lacks are left out, and said so through `seen`
    path = tmp_path / "detections.json"
    path.write_text(json.dumps([{"image": "000001.png", "detections": [
        {"label": "car", "box": [0, 0, 10, 10], "score": 0.9}, {"label": "cup", "box": [1, 1, 5, 5], "score": 0.8},
        {"label": "person", "box": [2, 2, 8, 8], "score": 0.7}]}]))
    seen: dict[str, int] = {}
    (boxes, scores, labels), = read_predictions(path, kitti, label_map={"person": "Pedestrian"}, seen=seen).values()
    assert labels.tolist() == [0, 1] and scores.tolist() == pytest.approx([0.9, 0.7])
    assert seen == {"car": 0, "cup": -1, "person": 1}
    with pytest.raises(ValueError, match=r"its labels \(car, cup, person\) are no class of the dataset"):
        read_predictions(path, ["dog"])


@pytest.mark.realdata
def test_saved_predictions_score_as_the_detector_does(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The COCO detector on the shared VOC photos: its saved detections give the mAP the detector gets, with
    COCO's names mapped to VOC's the same way (``tv`` as ``tvmonitor``)."""
    from mobilenet.cli import main

    src = shared_file("weights", "tflite", "detect.tflite")
    voc = shared_file("detection", "voc", "VOCdevkit")
    direct, saved = tmp_path / "direct.json", tmp_path / "saved.json"
    assert main(["detect", "eval", "--weights", str(src), "--data", str(voc), "--split", "complete",
                 "--json", str(direct), "--device", "cpu"]) == 0
    assert "scored by class name:" in capsys.readouterr().out
    photos = sorted(voc.glob("*/JPEGImages/*.jpg"))
    assert main(["detect", "predict", *map(str, photos), "--weights", str(src), "--out", str(tmp_path / "pics"),
                 "--score-threshold", "0.0", "--device", "cpu"]) == 0
    assert main(["detect", "eval", "--predictions", str(tmp_path / "pics" / "detections.json"), "--data", str(voc),
                 "--split", "complete", "--json", str(saved)]) == 0
    a, b = json.loads(direct.read_text()), json.loads(saved.read_text())
    assert b["map"] == pytest.approx(a["map"], abs=1e-3) and a["map"] > 0.3
    assert a["class_map"]["tv"] == "tvmonitor" and b["class_map"].get("tv", "tvmonitor") == "tvmonitor"
