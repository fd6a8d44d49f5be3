"""ONNX export of the SSD, with or without NMS, for ONNX Runtime and other runtimes.

Without NMS the graph ends in decoded boxes and class scores:
``input (B, 3, H, W)`` -> ``boxes (B, A, 4)`` normalised x1, y1, x2, y2 and ``scores (B, A, C)``
(softmax or sigmoid, background column dropped), so any runtime can do its own NMS.

With NMS, ONNX's ``NonMaxSuppression`` op (per class, IoU threshold, score threshold, at most
``max_detections`` per class) is appended and the graph outputs ``detections (N, 7)``: batch index,
x1, y1, x2, y2 (normalised), score, class index (0-based), over the whole batch.
The anchors are baked in as a constant for the exported input size.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import atomic_write
from .postprocess import class_scores
from .ssd import SSD

INPUT_NAME = "input"


class _Decoded(nn.Module):
    """The SSD plus box decoding and score conversion: (B, 3, H, W) -> boxes (B, A, 4), scores (B, A, C)."""

    def __init__(self, model: SSD, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("anchors", model.anchors(image_size, device="cpu").clone())
        self.score_fn = model.config.postprocess.score_fn

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        box_pred, logits = self.model(x)
        boxes = self.model.coder.decode(box_pred, self.anchors)
        if self.model.config.postprocess.clip_boxes:
            boxes = boxes.clamp(0, 1)
        return boxes, class_scores(logits, self.score_fn)


def _append_nms(proto: Any, max_detections: int, iou_threshold: float, score_threshold: float) -> Any:
    """Add NonMaxSuppression + gathers after the (boxes, scores) outputs; output ``detections (N, 7)``."""
    from onnx import TensorProto, helper

    g = proto.graph
    boxes, scores = g.output[0].name, g.output[1].name
    consts = [
        helper.make_tensor("nms_max", TensorProto.INT64, [1], [max_detections]),
        helper.make_tensor("nms_iou", TensorProto.FLOAT, [1], [iou_threshold]),
        helper.make_tensor("nms_score", TensorProto.FLOAT, [1], [score_threshold]),
        helper.make_tensor("idx0", TensorProto.INT64, [1], [0]),
        helper.make_tensor("idx1", TensorProto.INT64, [1], [1]),
        helper.make_tensor("idx2", TensorProto.INT64, [1], [2]),
    ]
    g.initializer.extend(consts)
    n = helper.make_node
    nodes = [
        n("Transpose", [scores], ["scores_bca"], perm=[0, 2, 1]),  # (B, C, A) as NMS wants
        # corners in x1, y1, x2, y2: NMS's IoU is symmetric in the axes, so TF's y-first order is not needed
        n("NonMaxSuppression", [boxes, "scores_bca", "nms_max", "nms_iou", "nms_score"], ["selected"],
          center_point_box=0),  # (N, 3): batch, class, anchor
        n("Gather", ["selected", "idx0"], ["sel_b"], axis=1),  # (N, 1)
        n("Gather", ["selected", "idx1"], ["sel_c"], axis=1),
        n("Gather", ["selected", "idx2"], ["sel_a"], axis=1),
        n("Concat", ["sel_b", "sel_a"], ["sel_ba"], axis=1),
        n("GatherND", [boxes, "sel_ba"], ["det_boxes"]),  # (N, 4)
        n("Concat", ["sel_b", "sel_a", "sel_c"], ["sel_bac"], axis=1),
        n("GatherND", [scores, "sel_bac"], ["det_scores"]),  # (N,)
        n("Unsqueeze", ["det_scores", "idx1"], ["det_scores_2d"]),
        n("Cast", ["sel_b"], ["sel_b_f"], to=TensorProto.FLOAT),
        n("Cast", ["sel_c"], ["sel_c_f"], to=TensorProto.FLOAT),
        n("Concat", ["sel_b_f", "det_boxes", "det_scores_2d", "sel_c_f"], ["detections"], axis=1),
    ]
    g.node.extend(nodes)
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["num_detections", 7]))
    return proto


def export_detector_onnx(
    model: SSD,
    path: str | os.PathLike[str],
    *,
    nms: bool = True,
    image_size: tuple[int, int] | None = None,
    max_detections: int | None = None,
    iou_threshold: float | None = None,
    score_threshold: float | None = None,
    opset: int = 18,
    class_names: list[str] | None = None,
) -> Path:
    """Write ``model`` as ONNX (dynamic batch). NMS settings default to the model's post-processing config."""
    try:
        import onnx
    except ImportError:
        raise ImportError("ONNX export needs onnx and onnxscript: pip install 'mobilenet[export]'") from None
    if not isinstance(model, SSD):
        raise TypeError(f"export_detector_onnx expects an SSD, got {type(model).__name__}")
    size = tuple(image_size or model.config.image_size)
    pp = model.config.postprocess
    net = _Decoded(model.eval(), size).eval()
    example = torch.randn(2, 3, *size)  # batch 2: a size-1 dim may be specialised as a constant
    batch = torch.export.Dim("batch", min=1, max=1024)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tmp_path = Path(tmp) / "ssd.onnx"
        torch.onnx.export(net, (example,), str(tmp_path), input_names=[INPUT_NAME], output_names=["boxes", "scores"],
                          opset_version=opset, dynamic_shapes={"x": {0: batch}}, dynamo=True, external_data=False,
                          verbose=False, report=False)
        proto = onnx.load(str(tmp_path))
    if nms:
        proto = _append_nms(proto, max_detections or pp.max_detections,
                            pp.iou_threshold if iou_threshold is None else iou_threshold,
                            pp.score_threshold if score_threshold is None else score_threshold)
        onnx.checker.check_model(proto)
    meta = {**model.to_metadata(), "image_size": list(size), "nms": nms, "class_names": class_names}
    proto.metadata_props.add(key="mobilenet", value=json.dumps(meta))
    with atomic_write(path) as f:
        f.write(proto.SerializeToString())
    return Path(path)
