"""ONNX export of the SSD, with and without NMS, checked in ONNX Runtime against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mobilenet.detection import SSD, SSDConfig
from mobilenet.detection.export import _append_nms, _Decoded, export_detector_onnx
from mobilenet.detection.postprocess import PostprocessConfig

ort = pytest.importorskip("onnxruntime", reason="ONNX export tests need onnxruntime")
pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = SSD(SSDConfig(num_classes=3, width_mult=0.25, image_size=(64, 96)))
    # trained-looking BN statistics and confident heads so that scores spread out
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    with torch.no_grad():
        for head in m.cls_heads:
            head.weight.mul_(30)
    return m.eval()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    # one torch.onnx export (~10 s) shared by both tests; export_detector_onnx(nms=True) is this + _append_nms
    return export_detector_onnx(model, tmp_path_factory.mktemp("onnx") / "ssd.onnx", nms=False)


@pytest.mark.slow
def test_onnx_without_nms_matches_pytorch(model, exported):
    path = exported
    x = torch.randn(3, 3, 64, 96)  # a batch size other than the export example's
    boxes, scores = ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})
    with torch.no_grad():
        ref_boxes, ref_scores = _Decoded(model, (64, 96))(x)
    np.testing.assert_allclose(boxes, ref_boxes.numpy(), atol=1e-4)
    np.testing.assert_allclose(scores, ref_scores.numpy(), atol=1e-5)


def test_onnx_with_nms_matches_our_postprocess(model, exported, tmp_path):
    import onnx

    proto = _append_nms(onnx.load(str(exported)), max_detections=100, iou_threshold=0.5, score_threshold=0.3)
    onnx.checker.check_model(proto)
    path = tmp_path / "ssd_nms.onnx"
    path.write_bytes(proto.SerializeToString())
    x = torch.randn(2, 3, 64, 96)
    (dets,) = ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})
    assert dets.ndim == 2 and dets.shape[1] == 7
    ours = model.detect(x, PostprocessConfig(score_threshold=0.3, iou_threshold=0.5, pre_nms_top_k=10_000,
                                             max_detections=10_000))
    for b, d in enumerate(ours):
        onnx_b = dets[dets[:, 0] == b]
        assert len(onnx_b) == len(d.scores) > 0
        key = lambda rows: sorted((int(c), round(float(s), 4)) for c, s in rows)  # noqa: E731
        assert key(zip(onnx_b[:, 6], onnx_b[:, 5], strict=True)) == key(zip(d.labels, d.scores, strict=True))
