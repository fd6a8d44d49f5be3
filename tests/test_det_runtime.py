"""Deployed detectors in their own runtimes behind the SSD's face (mobilenet.detection.runtime): Google's
detect.tflite in the interpreter equals the interpreter itself; the imported COCO SSD exported to float TF Lite
finds the detections of our PyTorch SSD; `detect predict/eval` take both."""

from __future__ import annotations

import json

import pytest
import torch

from mobilenet.detection.predict import list_images, model_input
from mobilenet.detection.runtime import RuntimeDetector, open_detector
from mobilenet.engine.detect import load_detector
from tests.conftest import shared_file

DETECT = ("weights", "tflite", "detect.tflite")


def _images():
    return list_images([shared_file("detection", "voc", "VOCdevkit", "VOC2007", "JPEGImages")])


@pytest.mark.realdata
def test_google_detect_tflite_in_the_interpreter(tmp_path):
    pytest.importorskip("ai_edge_litert")
    from PIL import Image

    from mobilenet.tflite.parity import interpreter, interpreter_detections, load_pixels

    path = shared_file(*DETECT)
    imported = load_detector(path)  # Google's file: imported into our SSD unless asked otherwise
    assert type(imported).__name__ == "SSD"
    det = load_detector(path, runtime="tflite", threads=1)
    assert isinstance(det, RuntimeDetector) and det.kind == "tflite_postprocess"
    assert det.weights_info.classes[0] == "person" and det.config.image_size == (300, 300)
    it = interpreter(path)
    for p in _images():
        x = model_input(Image.open(p), det)[None]
        ours = det.detect(x)[0]
        ref = interpreter_detections(it, load_pixels(p, (300, 300)))
        assert torch.equal(ours.labels, ref.labels) and torch.equal(ours.scores, ref.scores)
        assert torch.allclose(ours.boxes, ref.boxes)


@pytest.mark.realdata
@pytest.mark.slow
def test_exported_coco_ssd_finds_our_detections(tmp_path, capsys):
    pytest.importorskip("litert_torch")
    from mobilenet.cli import main
    from mobilenet.export import export
    from mobilenet.tflite.parity import Parity, match_detections

    model = load_detector(shared_file(*DETECT))
    path = export(model, tmp_path / "ssd.tflite", format="tflite")
    det = open_detector(path)
    assert isinstance(det, RuntimeDetector) and det.kind == "decoded"
    from PIL import Image

    parity = Parity()
    for p in _images():
        x = model_input(Image.open(p), model)[None]
        match_detections(model.detect(x)[0], det.detect(x)[0], parity, p.name, min_score=0.3, min_iou=0.99,
                         score_tol=1e-3)
    assert parity.references >= 5 and parity.matched == parity.references, parity.misses
    assert main(["detect", "predict", str(_images()[0]), "--weights", str(path), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["detections"] and out[0]["detections"][0]["label"] in model.weights_info.classes
