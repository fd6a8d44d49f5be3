"""Full-integer TF Lite export (mobilenet.tflite.quantized, written by mobilenet.tflite.writer): Google's quantized
classifier and COCO SSD, imported and exported again, give back the original files' outputs bit for bit in the
interpreter; models without recorded grids are calibrated; the files carry their metadata and run in the runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mobilenet
from mobilenet import runtimes
from mobilenet.export import check, export
from mobilenet.weights import WeightsInfo
from tests.conftest import shared_file

pytest.importorskip("ai_edge_litert")


@pytest.mark.realdata
def test_googles_quantized_classifier_round_trip_is_bit_exact(tmp_path):
    from mobilenet.convert import import_model
    from mobilenet.convert.parity import labelled_photos, photo_pixels
    from mobilenet.tflite.format import read_tflite
    from mobilenet.tflite.parity import tflite_outputs

    src = shared_file("weights", "tflite", "mobilenet_v1_0.25_128_quant.tflite")
    model = import_model(src)
    path = export(model, tmp_path / "again.tflite", format="tflite-int8")  # no images: the recorded grids
    photos = labelled_photos(shared_file("imagenet", "images"))
    pixels = photo_pixels([p for p, _ in photos], runtimes.load(src).preprocessing)
    np.testing.assert_array_equal(tflite_outputs(path, pixels), tflite_outputs(src, pixels))  # all 100 photos
    ours, theirs = read_tflite(path), read_tflite(src)
    assert ours.opcode_counts() == {k: v for k, v in theirs.opcode_counts().items()}
    predictor = runtimes.load(path)
    assert predictor.metadata["quantization"]["grids"] == "recorded" and predictor.input_dtype == "uint8"
    assert predictor.class_names == runtimes.load(src).class_names


@pytest.mark.realdata
@pytest.mark.slow
def test_googles_coco_ssd_round_trip_is_bit_exact(tmp_path):
    from mobilenet.detection.predict import list_images
    from mobilenet.detection.runtime import RuntimeDetector
    from mobilenet.tflite.parity import interpreter, load_pixels
    from mobilenet.tflite.ssd import import_detect_tflite

    src = shared_file("weights", "tflite", "detect.tflite")
    model = import_detect_tflite(src)
    path = export(model, tmp_path / "detect.tflite", format="tflite-int8")
    ours, theirs = interpreter(path), interpreter(src)
    images = list_images([shared_file("detection", "voc", "VOCdevkit"), shared_file("imagenet", "images")])
    for p in images:  # 108 photos: the four outputs of TFLite_Detection_PostProcess, equal
        pixels = load_pixels(p, (300, 300))[None]
        outs = []
        for it in (ours, theirs):
            it.set_tensor(it.get_input_details()[0]["index"], pixels)
            it.invoke()
            outs.append([it.get_tensor(d["index"]).copy() for d in it.get_output_details()])
        for a, b in zip(*outs, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=p.name)
    det = runtimes.load(path)
    assert det.task == "detect" and det.class_names[0] == "person"
    assert RuntimeDetector(det).kind == "tflite_postprocess"


def _tiny() -> mobilenet.MobileNetV1:
    model = mobilenet.create_model("mobilenet_v1_025_128", preset="tf", resolution=64, num_classes=6).train()
    with torch.no_grad():
        model(torch.randn(16, 3, 64, 64))
    model.eval()
    model.weights_info = WeightsInfo(classes=[f"c{i}" for i in range(6)])
    return model


@pytest.mark.parametrize("preset,scheme", [("tf", "per-channel"), ("paper", "per-channel"), ("tf", "per-tensor")])
def test_calibrated_classifier(preset, scheme, tmp_path):
    model = _tiny() if preset == "tf" else mobilenet.create_model("mobilenet_v1_025_128", resolution=64,
                                                                  num_classes=6).eval()
    x = torch.rand(16, 3, 64, 64) * 4 - 2  # normalised inputs whose pixels lie in 0..255
    with pytest.raises(ValueError, match="calibration"):
        export(model, tmp_path / "q.tflite", format="tflite-int8")
    path = export(model, tmp_path / "q.tflite", format="tflite-int8", calibration=x, scheme=scheme)
    result = check(path, model, x)  # probabilities of the uint8 file against the float model's softmax
    assert result.top1_agreement >= 0.8 and result.max_abs_diff < 0.2, result
    p = runtimes.load(path)
    meta = p.metadata["quantization"]
    assert meta["grids"] == "calibrated" and meta["input_folded"]  # ImageNet's per-channel mean/std: folded
    assert meta["scheme"].startswith(scheme)
    assert (p.input_dtype, p.layout, p.output_names[-1]) == ("uint8", "NHWC", "probabilities")


@pytest.mark.slow
def test_calibrated_ssd_ends_in_the_post_processing_op(tmp_path):
    from mobilenet.detection.runtime import RuntimeDetector
    from mobilenet.detection.ssd import SSD, SSDConfig
    from mobilenet.tflite.format import read_tflite

    model = SSD(SSDConfig(num_classes=3, width_mult=0.25, image_size=(128, 128))).train()
    with torch.no_grad():
        model(torch.randn(8, 3, 128, 128))
    model.eval()
    x = torch.rand(8, 3, 128, 128) * 2 - 1
    path = export(model, tmp_path / "ssd.tflite", format="tflite-int8", calibration=x)
    counts = read_tflite(path).opcode_counts()
    assert counts["TFLite_Detection_PostProcess"] == 1
    assert counts.get("LOGISTIC" if model.config.postprocess.score_fn == "sigmoid" else "SOFTMAX") == 1
    det = RuntimeDetector(runtimes.load(path))
    dets = det.detect(x[:2])
    assert len(dets) == 2 and all(d.boxes.shape[1] == 4 for d in dets)
    assert det.predictor.metadata["postprocess_op"]["num_classes"] == 3


@pytest.mark.parametrize("scheme", ["per-channel", "per-tensor"])
def test_calibrated_file_equals_our_own_int8_simulation(scheme, tmp_path):
    """Our own simulation (:func:`mobilenet.tflite.quantized.simulation` in exact fidelity mode) computes the file's
    integer arithmetic: the same probabilities on held-out inputs, up to the float softmax against the file's uint8
    one; in both schemes, with bias correction."""
    from mobilenet.preprocessing import Preprocessing
    from mobilenet.tflite.fidelity import uint8_activations
    from mobilenet.tflite.quantized import classifier_flatbuffer, classifier_grids, simulation

    model = _tiny()
    pre = Preprocessing(resolution=64, crop_mode="crop_resize", mean=(128.0,) * 3, std=(128.0,) * 3)
    model.weights_info = model.weights_info.replace(preprocessing=pre)  # one uint8 grid holds the pixels
    pixels = torch.randint(0, 256, (60, 3, 64, 64), generator=torch.Generator().manual_seed(3)).float()
    x = (pixels - 128) / 128
    grids = classifier_grids(model, x[:20], scheme=scheme)
    assert grids.biases and not grids.fold_input
    path = tmp_path / "q.tflite"
    path.write_bytes(classifier_flatbuffer(model, grids))
    out = runtimes.load(path)(x[20:])  # held out from calibration
    with uint8_activations(simulation(model, grids)) as simulated, torch.no_grad():  # exact: integer arithmetic
        ours = simulated(x[20:]).softmax(1)
    assert (ours.argmax(1) == out.argmax(1)).float().mean() >= 0.99
    assert (ours - out).abs().max() <= 1 / 256 + 1e-6  # one step of the file's uint8 softmax


def test_int8_file_imported_and_exported_again_is_bit_exact(tmp_path):
    """A calibrated file in the int8 scheme, imported (its int8 grids recorded as uint8 ones, zero point + 128) and
    exported again on those grids, gives back the same uint8 probabilities: the round trip of Google's 2018
    files, in TF Lite's int8 scheme."""
    from mobilenet.convert import import_model
    from mobilenet.tflite.format import read_tflite
    from mobilenet.tflite.parity import tflite_outputs

    model = _tiny()
    x = torch.rand(16, 3, 64, 64) * 4 - 2
    first = export(model, tmp_path / "q.tflite", format="tflite-int8", calibration=x)
    imported = import_model(first)
    again = export(imported, tmp_path / "again.tflite", format="tflite-int8")  # no images: the recorded grids
    assert runtimes.load(again).metadata["quantization"]["grids"] == "recorded"
    pixels = np.random.default_rng(0).integers(0, 256, (12, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(tflite_outputs(again, pixels), tflite_outputs(first, pixels))
    assert read_tflite(again).opcode_counts() == read_tflite(first).opcode_counts()
    assert read_tflite(first).opcode_counts()["QUANTIZE"] == 2  # uint8 pixels in, uint8 probabilities out


def test_a_channel_of_zero_weights_keeps_its_bias(tmp_path):
    """A channel whose kernel is all zeros keeps its (folded) bias in the int8 scheme: its weight scale is raised
    so the bias fits the int32 grid input scale x weight scale (the min/max scale alone, 2^-24, would clamp it to
    2^31 - 1 steps, ~0.01 here), and the file still equals our simulation."""
    from mobilenet.tflite.fidelity import uint8_activations
    from mobilenet.tflite.format import read_tflite
    from mobilenet.tflite.quantized import classifier_flatbuffer, classifier_grids, simulation

    model = _tiny()
    with torch.no_grad():
        bn = model.blocks[2].pw.bn
        model.blocks[2].pw.conv.weight[5] = 0  # a dead channel that still outputs a constant: its folded bias, 5
        bn.bias[5], bn.running_mean[5], bn.running_var[5] = 5.0, 0.0, 1.0 - bn.eps
    x = torch.rand(40, 3, 64, 64) * 4 - 2
    grids = classifier_grids(model, x[:20])
    path = tmp_path / "q.tflite"
    path.write_bytes(classifier_flatbuffer(model, grids))
    (bias,) = [t for t in read_tflite(path).tensors if t.name == "blocks.2.pw/bias"]
    assert bias.numpy()[5] * float(bias.scale[5]) == pytest.approx(5.0, rel=1e-4)
    with uint8_activations(simulation(model, grids)) as simulated, torch.no_grad():
        ours = simulated(x[20:]).softmax(1)
    assert (ours - runtimes.load(path)(x[20:])).abs().max() <= 1 / 256 + 1e-6
