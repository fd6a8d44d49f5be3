"""ONNX export of the SSD, with and without NMS (per-class and class-agnostic), checked in ONNX Runtime against
PyTorch's ``SSD.detect``."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from mobilenet.detection import SSD, SSDConfig
from mobilenet.detection.export import append_postprocess, export_network, export_postprocess_config
from mobilenet.detection.postprocess import PostprocessConfig, class_scores

ort = pytest.importorskip("onnxruntime", reason="ONNX export tests need onnxruntime")
pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript")

SIZE = (64, 96)  # a non-square input: 138 anchors
# per-class as SSD trains it; class-agnostic as TF Lite's detect.tflite (sigmoid, boxes not clipped)
PER_CLASS = PostprocessConfig(score_threshold=0.3, iou_threshold=0.5, pre_nms_top_k=400, max_detections=10)
AGNOSTIC = PostprocessConfig(score_threshold=0.3, iou_threshold=0.5, pre_nms_top_k=400, max_detections=8,
                             score_fn="sigmoid", nms_mode="class_agnostic", clip_boxes=False)
# each case makes one limit bind on the test images (checked in the test), so the graph must apply it as detect does
NMS_CASES = {
    "per_class-max_detections": PER_CLASS,
    "per_class-pre_nms_top_k": replace(PER_CLASS, pre_nms_top_k=2, max_detections=100),
    "class_agnostic-max_detections": AGNOSTIC,
    "class_agnostic-pre_nms_top_k": replace(AGNOSTIC, pre_nms_top_k=5, max_detections=100),
}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = SSD(SSDConfig(num_classes=3, width_mult=0.25, image_size=SIZE))
    # trained-looking BN statistics (the batch's own), so that the outputs depend on the input: with the
    # default statistics the random backbone maps every image to the same detections
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None
            mod.reset_running_stats()
    m.train()
    with torch.no_grad():
        m(torch.randn(16, 3, *SIZE))
        for head in [*m.cls_heads, *m.box_heads]:  # confident heads, so scores spread over (0, 1)
            head.weight.mul_(3)
    return m.eval()


@pytest.fixture(scope="module")
def network(model):
    # one torch.onnx export (~10 s) shared by all tests; every post-processing variant is appended to a copy
    return export_network(model, SIZE)


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


def _session(network, pp: PostprocessConfig, nms: bool):
    proto = append_postprocess(copy.deepcopy(network), pp, nms=nms)
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.slow  # the shared network export (~10 s) is paid by the first of these
@pytest.mark.parametrize("pp", [PER_CLASS, AGNOSTIC], ids=["softmax-clip", "sigmoid-noclip"])
def test_onnx_without_nms_matches_pytorch(model, network, pp):
    x = _images(3, seed=1)  # a batch size other than the export example's
    boxes, scores = _session(network, pp, nms=False).run(None, {"input": x.numpy()})
    with torch.no_grad():
        box_pred, logits = model(x)
    ref_boxes = model.coder.decode(box_pred, model.anchors(SIZE))
    if pp.clip_boxes:
        ref_boxes = ref_boxes.clamp(0, 1)
    else:
        assert (ref_boxes < 0).any() or (ref_boxes > 1).any()  # so clipping would have shown
    np.testing.assert_allclose(boxes, ref_boxes.numpy(), atol=1e-4)
    np.testing.assert_allclose(scores, class_scores(logits, pp.score_fn).numpy(), atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("case", NMS_CASES)
def test_onnx_nms_matches_pytorch_detect(model, network, case):
    pp = NMS_CASES[case]
    x = _images(4, seed=2)
    (dets,) = _session(network, pp, nms=True).run(None, {"input": x.numpy()})
    assert dets.ndim == 2 and dets.shape[1] == 7
    ours = model.detect(x, pp)
    assert sum(len(d.scores) for d in ours) > 4 * 2  # enough detections for the comparison to mean something
    limit = case.split("-")[1]
    lifted = model.detect(x, replace(pp, **{limit: 10_000}))
    assert any(not torch.equal(u.scores, d.scores) for u, d in zip(lifted, ours, strict=True)), f"{limit} not binding"
    for b, d in enumerate(ours):
        rows = dets[dets[:, 0] == b]
        assert len(rows) == len(d.scores) <= pp.max_detections
        # same detections in the same order (highest score first): label, score, box
        np.testing.assert_array_equal(rows[:, 6].astype(np.int64), d.labels.numpy())
        np.testing.assert_allclose(rows[:, 5], d.scores.numpy(), atol=1e-4)
        np.testing.assert_allclose(rows[:, 1:5], d.boxes.numpy(), atol=1e-4)


@pytest.mark.slow
def test_nms_mode_changes_the_detections(network):
    """The two modes differ on these images, so the parity above can tell them apart."""
    x = _images(4, seed=2)
    swapped = replace(AGNOSTIC, nms_mode="per_class")
    (a,) = _session(network, AGNOSTIC, nms=True).run(None, {"input": x.numpy()})
    (p,) = _session(network, swapped, nms=True).run(None, {"input": x.numpy()})
    assert a.shape != p.shape or not np.allclose(a, p)


def test_export_settings_override_the_models_and_are_checked(model):
    pp = export_postprocess_config(model, nms_mode="class_agnostic", max_detections=5)
    assert pp.nms_mode == "class_agnostic" and pp.max_detections == 5
    assert pp.iou_threshold == model.config.postprocess.iou_threshold  # not given: the model's
    with pytest.raises(ValueError, match="nms_mode"):
        export_postprocess_config(model, nms_mode="per-image")
    with pytest.raises(ValueError, match="max_detections must be >= 1, got 0"):
        export_postprocess_config(model, max_detections=0)


@pytest.mark.slow
def test_append_postprocess_rejects_a_foreign_graph_and_negative_threshold(network):
    import onnx

    with pytest.raises(ValueError, match="score_threshold must be >= 0"):
        append_postprocess(copy.deepcopy(network), replace(PER_CLASS, score_threshold=-0.1))
    done = append_postprocess(copy.deepcopy(network), PER_CLASS)
    with pytest.raises(ValueError, match="outputs decoded, logits"):
        append_postprocess(onnx.ModelProto.FromString(done.SerializeToString()), PER_CLASS)


@pytest.mark.slow
def test_int8_export_quantizes_only_the_convs_and_stays_close(model, tmp_path):
    from mobilenet.detection.export import export_detector_int8

    pytest.importorskip("onnxruntime.quantization")
    import onnx

    calib = _images(8, seed=3)
    path = export_detector_int8(model, tmp_path / "int8.onnx", calib, nms=False)
    graph = onnx.load(str(path)).graph
    consumers = {n.op_type for n in graph.node for i in n.input
                 if any(d.output[0] == i for d in graph.node if d.op_type == "DequantizeLinear")}
    # convs, and what passes their uint8 outputs on exactly (ReLU6, the heads' NCHW -> NHWC); decoding and
    # scores stay float
    assert "Conv" in consumers and consumers <= {"Conv", "Clip", "Relu", "Transpose"}
    x = _images(2, seed=4)
    boxes, scores = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    with torch.no_grad():
        box_pred, logits = model(x)
    ref_scores = class_scores(logits, model.config.postprocess.score_fn).numpy()
    ref_boxes = model.coder.decode(box_pred, model.anchors(SIZE)).clamp(0, 1).numpy()
    # int8 noise on random weights, not an accuracy claim (the real detector's is in benchmarks/detect_speed.py)
    # the same network with int8 noise (large on this random one: correlation 0.74 measured); the accuracy on
    # real photos is tested on the imported COCO detector (tests/test_det_cli.py) and in benchmarks/detect_speed.py
    assert np.corrcoef(scores.ravel(), ref_scores.ravel())[0, 1] > 0.6
    assert np.abs(boxes - ref_boxes).mean() < 0.05  # measured 0.017
