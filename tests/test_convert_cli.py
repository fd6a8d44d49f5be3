"""`mobilenet convert` end to end: success, one-line errors with exit code 2, and predict on an import."""

from __future__ import annotations

import json

import pytest

from mobilenet.checkpoint import load
from mobilenet.cli import main
from mobilenet.convert import import_model
from mobilenet.model import MobileNetV1
from tests.conftest import shared_file
from tests.convert_writers import slim_variables, write_tf_checkpoint


@pytest.fixture
def slim_prefix(tmp_path):
    model = MobileNetV1(width_mult=0.25, resolution=128, num_classes=1001, preset="tf")
    return write_tf_checkpoint(tmp_path / "mobilenet_v1_0.25_128.ckpt", slim_variables(model))


def test_convert_writes_a_loadable_file(slim_prefix, tmp_path, capsys):
    out = tmp_path / "ours.safetensors"
    assert main(["convert", f"{slim_prefix}.index", "--out", str(out), "--drop-background"]) == 0
    assert "width 0.25, 128 px, 1000 classes, preset tf" in capsys.readouterr().out
    model = load(out)
    assert model.num_classes == 1000 and model.weights_info.source.format == "slim"


def test_default_output_is_in_the_current_folder(slim_prefix, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["convert", str(slim_prefix)]) == 0
    assert (work / "mobilenet_v1_0.25_128.safetensors").is_file()


@pytest.mark.parametrize("name, content, message", [
    ("garbage.tflite", b"\x00" * 64, "not a TF Lite model"),
    ("garbage.caffemodel", b"\x0a\xff\xff\xff\x0f", "not a readable .caffemodel"),
    ("garbage.h5", b"plain text, not HDF5", "not an HDF5 file"),
    ("garbage.ckpt.index", b"x" * 100, "not a TensorFlow checkpoint index"),
    ("notes.txt", b"hello", "cannot tell the format"),
])
def test_bad_files_fail_with_one_line(tmp_path, capsys, name, content, message):
    pytest.importorskip("h5py") if name.endswith(".h5") else None
    src = tmp_path / name
    src.write_bytes(content)
    assert main(["convert", str(src), "--out", str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mobilenet convert: error:") and message in err and "\n" not in err
    assert not (tmp_path / "o.safetensors").exists()


def test_mismatched_width_fails(slim_prefix, tmp_path, capsys):
    assert main(["convert", str(slim_prefix), "--width-mult", "1.0", "-o", str(tmp_path / "o.safetensors")]) == 2
    assert "width-0.25" in capsys.readouterr().err


def test_detector_tflite_converts_to_an_ssd_but_not_to_a_classifier(tmp_path, capsys):
    src = shared_file("weights", "tflite", "detect.tflite")
    assert main(["convert", str(src), "-o", str(tmp_path / "o.safetensors")]) == 0
    assert "ssd_mobilenet_v1, width 0.75, 300x300 px, 90 classes" in capsys.readouterr().out
    with pytest.raises(ValueError, match="not part of a MobileNet v1 classifier"):
        import_model(src)


@pytest.mark.slow
def test_predict_on_imported_tflite_gives_the_right_classes(tmp_path, capsys):
    images = shared_file("imagenet", "images")
    out = tmp_path / "tflite.safetensors"
    assert main(["convert", str(shared_file("weights", "tflite", "mobilenet_v1_0.25_128_quant.tflite")),
                 "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["predict", str(images), "--weights", str(out), "--topk", "5", "--format", "json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 100
    top1 = sum(r["top"][0]["label"] == r["path"].rsplit("/", 1)[1].split("_")[0] for r in results)
    top5 = sum(any(t["label"] == r["path"].rsplit("/", 1)[1].split("_")[0] for t in r["top"]) for r in results)
    # the interpreter scores 45 / 70 on these photos; ours measured 44 / 70 (benchmarks/import_parity.py)
    assert top1 >= 42 and top5 >= 68, (top1, top5)
    tench = next(r for r in results if r["path"].endswith("n01440764_tench.JPEG"))
    assert tench["top"][0] == {**tench["top"][0], "label": "n01440764", "index": 1}  # background offset kept
