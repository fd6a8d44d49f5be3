"""The COCO SSD imported from TF Lite's detect.tflite reproduces the TF Lite interpreter's detections."""

from __future__ import annotations

import pytest
import torch

from mobilenet.detection.anchors import generate_anchors
from mobilenet.tflite.format import read_tflite
from mobilenet.tflite.parity import tflite_parity
from mobilenet.tflite.ssd import file_anchors, import_detect_tflite, read_labelmap
from tests.conftest import shared_file

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def detect_path():
    return shared_file("weights", "tflite", "detect.tflite")


@pytest.fixture(scope="module")
def model(detect_path):
    return import_detect_tflite(detect_path)


def test_import_reads_config_from_the_file(model, detect_path):
    cfg = model.config
    assert cfg.width_mult == 0.75 and cfg.num_classes == 90 and cfg.image_size == (300, 300)
    assert cfg.scale_factors == (10.0, 10.0, 5.0, 5.0)
    assert cfg.postprocess.nms_mode == "class_agnostic" and cfg.postprocess.score_fn == "sigmoid"
    assert cfg.postprocess.max_detections == 10 and cfg.postprocess.iou_threshold == pytest.approx(0.6)
    names = model.weights_info.classes
    assert len(names) == 90 and names[0] == "person" and names[17] == "dog"
    assert read_labelmap(detect_path.parent / "labelmap.txt", 90) == names


def test_regenerated_anchors_equal_the_files_constant(model, detect_path):
    ours = generate_anchors(model.config.anchors, model.feature_sizes((300, 300)), (300, 300))
    theirs = file_anchors(read_tflite(detect_path))
    assert torch.equal(model.anchors(), theirs)  # the model runs with the file's (quantized) anchors
    assert ours.shape == theirs.shape == (1917, 4)
    # the file stores uint8 anchors: equal to within half a quantization step (scale 0.00645)
    assert (ours - theirs).abs().max() < 0.0033


def test_not_a_detector_is_rejected():
    with pytest.raises(ValueError, match="TFLite_Detection_PostProcess"):
        import_detect_tflite(shared_file("weights", "tflite", "mobilenet_v1_0.25_128_quant.tflite"))


def _photos():
    folders = [("imagenet", "images"), ("detection", "voc", "VOCdevkit", "VOC2012", "JPEGImages"),
               ("detection", "kitti", "training", "image_2")]
    files = []
    for parts in folders:
        files += sorted(p for p in shared_file(*parts).iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))[:12]
    return files


@pytest.mark.slow
def test_parity_with_the_tflite_interpreter(model, detect_path):
    pytest.importorskip("ai_edge_litert.interpreter", reason="parity needs ai-edge-litert")
    parity = tflite_parity(model, detect_path, _photos())
    assert parity.references >= 20, f"too few reference detections to judge parity ({parity.references})"
    # uint8 activations in TF Lite vs float here: two near-tied anchors can swap places in NMS;
    # everything else must agree (same label, IoU >= 0.9, score within 0.05)
    assert parity.rate >= 0.95, (parity.matched, parity.references, parity.misses)


def test_import_records_the_interpreters_uint8_grids(model, detect_path, tmp_path):
    from mobilenet.checkpoint import load, save
    from mobilenet.tflite.fidelity import can_run_exact, recorded_activation_grids
    from mobilenet.tflite.grid import ActivationGrid

    grids = recorded_activation_grids(model)
    modules = dict(model.named_modules())
    units = [n for n in grids if n in modules]
    # 27 backbone units, 8 extra convs, 6 box and 6 class heads; plus input, both concats and the logistic
    assert len(units) == 47 and set(grids) - set(units) == {"input", "box_encodings", "class_logits",
                                                             "class_scores"}
    assert grids["input"] == ActivationGrid(scale=0.0078125, zero_point=128)
    assert grids["class_scores"] == ActivationGrid(scale=1 / 256, zero_point=0)
    # a fused ReLU6 on an extra block narrows the grid to the integers of [0, 6]
    assert grids["extras.0.reduce"].quant_min == grids["extras.0.reduce"].zero_point
    assert grids["extras.0.reduce"].range[1] <= 6.0
    path = save(model, tmp_path / "ssd.safetensors", info=model.weights_info)
    loaded = load(path)
    assert recorded_activation_grids(loaded) == grids
    assert can_run_exact(loaded)  # accumulator scales and the kernels' grids travel with the file too


def test_fidelity_reproduces_the_interpreters_uint8_tensors(model, detect_path):
    pytest.importorskip("ai_edge_litert.interpreter", reason="parity needs ai-edge-litert")
    from mobilenet.tflite.parity import uint8_tensor_parity

    photos = _photos()[:2] + sorted(shared_file("detection", "kitti", "training", "image_2").iterdir())[:1]
    result = uint8_tensor_parity(model, detect_path, photos)
    # the post-processing op's inputs (1917 x 4 box encodings, 1917 x 91 scores) equal, value for value
    assert (result.photos, result.equal_photos) == (3, 3), result
    for kernels in ("builtin", "reference"):  # TF Lite's own kernels round differently; reproduced too
        result = uint8_tensor_parity(model, detect_path, photos[:1], kernels=kernels)
        assert result.equal_photos == 1, (kernels, result)


@pytest.mark.slow
def test_fidelity_parity_with_the_tflite_interpreter(model, detect_path):
    pytest.importorskip("ai_edge_litert.interpreter", reason="parity needs ai-edge-litert")
    parity = tflite_parity(model, detect_path, _photos(), fidelity=True)
    assert parity.references >= 20, f"too few reference detections to judge parity ({parity.references})"
    assert parity.rate == 1.0, (parity.matched, parity.references, parity.misses)
