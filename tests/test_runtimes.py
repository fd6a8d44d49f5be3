"""The runtimes seam: suffix -> runtime, one Predictor contract, each runtime's own input contract handled inside.

Real files: Google's uint8 ``mobilenet_v1_0.25_128_quant.tflite`` through the TF Lite runtime gives exactly the
interpreter's outputs fed with pixels (the pixel contract of quantized inputs), its class list and TF's
preprocessing; the same model imported and exported runs in ONNX Runtime and OpenVINO within 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mobilenet
from mobilenet import runtimes
from mobilenet.runtimes.predictor import RuntimeMissingError, require
from tests.conftest import shared_file

QUANT = ("weights", "tflite", "mobilenet_v1_0.25_128_quant.tflite")


def test_runtime_by_suffix():
    assert runtimes.runtime_for("a/m.tflite") == "tflite" and runtimes.runtime_for("m.XML") == "openvino"
    assert runtimes.runtime_for("m.pte") == "executorch" and runtimes.runtime_for("m.pt2") == "torch"
    assert runtimes.is_artifact("m.onnx") and not runtimes.is_artifact("m.safetensors")
    with pytest.raises(ValueError, match="known: .safetensors"):
        runtimes.runtime_for("m.h5")


def test_load_refusals(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        runtimes.load(tmp_path / "none.onnx")
    (tmp_path / "m.tflite").write_bytes(b"x")
    with pytest.raises(ValueError, match="does not read .tflite"):
        runtimes.load(tmp_path / "m.tflite", runtime="onnxruntime")
    with pytest.raises(ValueError, match="threads"):
        runtimes.load(tmp_path / "m.tflite", threads=0)
    with pytest.raises(ValueError, match="unknown runtime"):
        runtimes.module("tensorrt")


def test_a_missing_runtime_says_which_extra():
    with pytest.raises(RuntimeMissingError, match=r"pip install 'mobilenet\[tflite\]'"):
        require("no_such_runtime_module", "tflite", "tflite")
    assert runtimes.available("torch") is None


def test_weights_file_runs_in_the_torch_runtime(tmp_path):
    model = mobilenet.create_model("mobilenet_v1_025_128", resolution=64, num_classes=5).eval()
    path = mobilenet.save(model, tmp_path / "m.safetensors")
    predictor = runtimes.load(path, threads=1)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(predictor(x), model(x))
        assert predictor(torch.randn(1, 3, 96, 96)).shape == (1, 5)  # a weights file runs at any size
    assert predictor.runtime == "torch" and predictor.task == "classify" and "1 thread" in predictor.describe()
    with pytest.raises(ValueError, match=r"takes \(B, 3, 64, 64\)"):
        predictor(torch.randn(2, 1, 64, 64))


@pytest.fixture(scope="module")
def photos():
    from mobilenet.convert.parity import labelled_photos

    return labelled_photos(shared_file("imagenet", "images"))


@pytest.mark.realdata
def test_google_uint8_tflite_through_the_runtime_is_the_interpreter(photos):
    pytest.importorskip("ai_edge_litert")
    from mobilenet.convert.parity import photo_pixels
    from mobilenet.tflite.parity import tflite_outputs

    path = shared_file(*QUANT)
    predictor = runtimes.load(path, threads=1)
    assert (predictor.input_dtype, predictor.layout, predictor.input_shape) == ("uint8", "NHWC", (1, 3, 128, 128))
    pre = predictor.preprocessing  # from the file's input quantization: (pixel - 128) / 128, TF's crop
    assert pre.crop_mode == "crop_resize" and pre.mean == (128.0,) * 3 and pre.std == (128.0,) * 3
    names = predictor.class_names
    assert len(names) == 1001 and names[0] == "background" and names[1] == "n01440764"
    pixels = photo_pixels([p for p, _ in photos], pre)
    x = pre.normalize(torch.from_numpy(pixels).permute(0, 3, 1, 2))
    np.testing.assert_array_equal(predictor.feed(x[:4]), pixels[:4])  # the pixels come back exactly
    out = predictor(x).numpy()  # 100 photos: batch 100 run one image at a time (the file's batch is 1)
    np.testing.assert_array_equal(out, tflite_outputs(path, pixels))
    top1 = np.mean(out.argmax(1) == np.array([label + 1 for _, label in photos]))
    assert top1 == pytest.approx(0.45)  # Google's own uint8 run of the file (the import's parity test)


@pytest.mark.realdata
@pytest.mark.slow
def test_imported_model_exported_runs_equal_in_onnxruntime_and_openvino(photos, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    from mobilenet.convert import import_model
    from mobilenet.convert.parity import photo_pixels
    from mobilenet.export import export

    model = import_model(shared_file(*QUANT))
    path = export(model, tmp_path / "m.onnx", format="onnx")
    pre = runtimes.load(path).preprocessing
    x = pre.normalize(torch.from_numpy(photo_pixels([p for p, _ in photos[:20]], pre)).permute(0, 3, 1, 2))
    with torch.no_grad():
        ref = model(x)
    for runtime, options in (("onnxruntime", {}), ("openvino", {"precision": "f32"})):
        predictor = runtimes.load(path, runtime=runtime, threads=1, **options)
        assert predictor.runtime == runtime and predictor.preprocessing == pre
        assert (predictor(x) - ref).abs().max().item() <= 1e-4, runtime


@pytest.mark.realdata
def test_cli_eval_and_predict_take_a_tflite_file(photos, capsys):
    pytest.importorskip("ai_edge_litert")
    import json

    from mobilenet.cli import main

    path = shared_file(*QUANT)
    folder = photos[0][0].parent
    assert main(["eval", "--weights", str(path), "--data", str(folder), "--labels", "from-filename",
                 "--format", "json", "--workers", "0", "--threads", "1"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["count"] == 100 and res["top1"] == pytest.approx(45.0) and res["runtime"].startswith("tflite")
    tench = next(p for p, _ in photos if p.name.startswith("n01440764"))
    assert main(["predict", str(tench), "--weights", str(path), "--topk", "1"]) == 0
    assert "(tench)" in capsys.readouterr().out
    assert main(["predict", str(tench), "--weights", str(path), "--device", "cuda"]) == 2
    err = capsys.readouterr().err  # no CUDA here: refused by the device check; with CUDA: by the runtime's
    assert err.count("\n") == 1 and ("CUDA" in err or "runs in tflite on the CPU" in err)
