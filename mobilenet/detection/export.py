"""ONNX export of the SSD, with or without NMS, for ONNX Runtime and other runtimes.

The graph is the network exported by ``torch.onnx`` (``input (B, 3, H, W)`` -> decoded boxes and raw
class logits, anchors baked in as a constant for the exported input size) followed by the model's
post-processing (``PostprocessConfig``) written as plain ONNX ops, so one network export serves every
post-processing setting:

* no NMS: ``boxes (B, A, 4)`` normalised x1, y1, x2, y2 (clipped to the image when ``clip_boxes``) and
  ``scores (B, A, C)`` (softmax or sigmoid as ``score_fn`` says, background column dropped), so any
  runtime can do its own NMS.
* with NMS: ``detections (N, 7)`` over the whole batch, each row batch index, x1, y1, x2, y2
  (normalised), score, class index (0-based); per image at most ``max_detections`` rows, highest
  score first. Exactly what ``SSD.detect`` computes, in either ``nms_mode``:

  - ``per_class``: per class, the ``pre_nms_top_k`` best anchors above ``score_threshold``, ONNX
    ``NonMaxSuppression`` per class, then the best ``max_detections`` over all classes;
  - ``class_agnostic`` (TF Lite's ``TFLite_Detection_PostProcess``): each anchor keeps its best class,
    one NMS across classes over the ``pre_nms_top_k`` best anchors, ``max_detections`` kept.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import atomic_write
from .postprocess import Detections, PostprocessConfig
from .ssd import SSD

INPUT_NAME = "input"
NETWORK_PREFIX = "model."  # SSD.decoded(size) holds the SSD as ``model``: its weights' names in the exported graph
NMS_MODES = ("per_class", "class_agnostic")


def export_network(model: SSD, image_size: tuple[int, int] | None = None, *, opset: int = 18) -> Any:
    """``torch.onnx`` export of the network with dynamic batch: an ``onnx.ModelProto`` whose outputs are
    ``decoded (B, A, 4)`` and ``logits (B, A, C + 1)``; ``append_postprocess`` turns it into a detector graph."""
    import onnx

    size = tuple(image_size or model.config.image_size)
    net = model.decoded(size)
    example = torch.randn(2, 3, *size)  # batch 2: a size-1 dim may be specialised as a constant
    batch = torch.export.Dim("batch", min=1, max=1024)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tmp_path = Path(tmp) / "ssd.onnx"
        torch.onnx.export(net, (example,), str(tmp_path), input_names=[INPUT_NAME], output_names=["decoded", "logits"],
                          opset_version=opset, dynamic_shapes={"x": {0: batch}}, dynamo=True, external_data=False,
                          verbose=False, report=False)
        return onnx.load(str(tmp_path))


def _static_dim(proto: Any, output: int, axis: int) -> int:
    dim = proto.graph.output[output].type.tensor_type.shape.dim[axis]
    if not dim.HasField("dim_value") or dim.dim_value <= 0:
        raise ValueError(f"output {proto.graph.output[output].name!r} has no static size on axis {axis}")
    return int(dim.dim_value)


def _scores_nodes(pp: PostprocessConfig) -> list[Any]:
    """decoded, logits -> boxes (B, A, 4) and scores (B, A, C): clipping and score function as ``postprocess``."""
    from onnx import helper

    n = helper.make_node
    nodes = [n("Clip", ["decoded", "pp_zero", "pp_one"], ["boxes"]) if pp.clip_boxes
             else n("Identity", ["decoded"], ["boxes"])]
    if pp.score_fn == "softmax":
        nodes.append(n("Softmax", ["logits"], ["probs"], axis=-1))
    else:
        nodes.append(n("Sigmoid", ["logits"], ["probs"]))
    nodes.append(n("Slice", ["probs", "pp_one_i", "pp_big_i", "pp_two_i"], ["scores"]))  # drop background column
    return nodes


def _nms_nodes(pp: PostprocessConfig, num_anchors: int, num_classes: int) -> tuple[list[Any], list[Any]]:
    """boxes (B, A, 4), scores (B, A, C) -> detections (N, 7); returns (nodes, constants).

    The candidates are laid out (B, K, A) as ``NonMaxSuppression`` wants them, K = C classes (per_class)
    or K = 1 (class_agnostic: each anchor's best score, its class remembered in ``labels (B, A)``).
    """
    from onnx import TensorProto, helper

    def const(name: str, dtype: int, values: list[Any], dims: list[int] | None = None) -> Any:
        return helper.make_tensor(name, dtype, [len(values)] if dims is None else dims, values)

    n = helper.make_node
    k_rows = num_classes if pp.nms_mode == "per_class" else 1
    top_k = min(pp.pre_nms_top_k, num_anchors)
    final_k = min(pp.max_detections, k_rows * num_anchors)
    consts = [
        const("nms_max", TensorProto.INT64, [pp.max_detections]),  # per class: more cannot reach the final list
        const("nms_iou", TensorProto.FLOAT, [pp.iou_threshold]),
        const("nms_score", TensorProto.FLOAT, [pp.score_threshold]),
        const("nms_none", TensorProto.FLOAT, [-1.0], []),  # below every score (scores are in [0, 1])
        const("nms_valid", TensorProto.FLOAT, [-0.5], []),
        const("nms_top_k", TensorProto.INT64, [top_k]),
        const("nms_kth", TensorProto.INT64, [top_k - 1]),
        const("nms_kth_end", TensorProto.INT64, [top_k]),
        const("nms_final_k", TensorProto.INT64, [final_k]),
        const("nms_flat", TensorProto.INT64, [0, -1]),
        const("nms_axes2", TensorProto.INT64, [2]),
        const("nms_axes1", TensorProto.INT64, [1]),
        const("nms_i0", TensorProto.INT64, [0], []),
        const("nms_num_anchors", TensorProto.INT64, [num_anchors], []),
    ]
    if pp.nms_mode == "per_class":
        nodes = [n("Transpose", ["scores"], ["cand"], perm=[0, 2, 1])]  # (B, C, A)
    else:
        nodes = [
            n("ReduceMax", ["scores", "nms_axes2"], ["best"], keepdims=1),  # (B, A, 1)
            n("ArgMax", ["scores"], ["labels"], axis=2, keepdims=0),  # (B, A) int64
            n("Transpose", ["best"], ["cand"], perm=[0, 2, 1]),  # (B, 1, A)
        ]
    # pre-NMS top-k per row of K: scores below the k-th best become -1 and fail the score threshold
    nodes += [
        n("TopK", ["cand", "nms_top_k"], ["topk_vals", "topk_idx"], axis=2),  # (B, K, k)
        n("Slice", ["topk_vals", "nms_kth", "nms_kth_end", "nms_axes2"], ["kth"]),  # (B, K, 1)
        n("GreaterOrEqual", ["cand", "kth"], ["in_top_k"]),
        n("Where", ["in_top_k", "cand", "nms_none"], ["cand_k"]),  # (B, K, A)
        # corners in x1, y1, x2, y2: NMS's IoU is symmetric in the axes, so TF's y-first order is not needed
        n("NonMaxSuppression", ["boxes", "cand_k", "nms_max", "nms_iou", "nms_score"], ["selected"],
          center_point_box=0),  # (N, 3): batch, row of K, anchor
        # best max_detections per image: scatter the kept scores back into (B, K*A), -1 elsewhere, and TopK
        n("GatherND", ["cand_k", "selected"], ["sel_scores"]),  # (N,)
        n("Shape", ["cand_k"], ["cand_shape"]),
        n("Expand", ["nms_none", "cand_shape"], ["blank"]),  # (B, K, A) of -1
        n("ScatterND", ["blank", "selected", "sel_scores"], ["kept"]),
        n("Reshape", ["kept", "nms_flat"], ["kept_flat"]),  # (B, K*A)
        n("TopK", ["kept_flat", "nms_final_k"], ["final_vals", "final_idx"], axis=1),  # (B, M), score order
        n("Greater", ["final_vals", "nms_valid"], ["is_det"]),
        n("NonZero", ["is_det"], ["det_bm_t"]),  # (2, N): image, rank
        n("Transpose", ["det_bm_t"], ["det_bm"], perm=[1, 0]),  # (N, 2)
        n("GatherND", ["final_vals", "det_bm"], ["det_scores"]),  # (N,)
        n("GatherND", ["final_idx", "det_bm"], ["det_flat"]),  # (N,) index into K*A
        n("Div", ["det_flat", "nms_num_anchors"], ["det_row"]),  # class (per_class) or 0
        n("Mod", ["det_flat", "nms_num_anchors"], ["det_anchor"]),
        n("Gather", ["det_bm", "nms_i0"], ["det_b"], axis=1),  # (N,)
        n("Unsqueeze", ["det_b", "nms_axes1"], ["det_b_2d"]),
        n("Unsqueeze", ["det_anchor", "nms_axes1"], ["det_anchor_2d"]),
        n("Concat", ["det_b_2d", "det_anchor_2d"], ["det_ba"], axis=1),  # (N, 2)
        n("GatherND", ["boxes", "det_ba"], ["det_boxes"]),  # (N, 4)
    ]
    if pp.nms_mode == "per_class":
        nodes.append(n("Identity", ["det_row"], ["det_label"]))
    else:
        nodes.append(n("GatherND", ["labels", "det_ba"], ["det_label"]))
    nodes += [
        n("Unsqueeze", ["det_scores", "nms_axes1"], ["det_scores_2d"]),
        n("Unsqueeze", ["det_label", "nms_axes1"], ["det_label_2d"]),
        n("Cast", ["det_b_2d"], ["det_b_f"], to=TensorProto.FLOAT),
        n("Cast", ["det_label_2d"], ["det_label_f"], to=TensorProto.FLOAT),
        n("Concat", ["det_b_f", "det_boxes", "det_scores_2d", "det_label_f"], ["detections"], axis=1),
    ]
    return nodes, consts


def append_postprocess(proto: Any, pp: PostprocessConfig, *, nms: bool = True) -> Any:
    """Add ``pp`` as ONNX ops after ``export_network``'s outputs (module doc); returns the checked proto.

    ``nms=False`` ends at ``boxes`` and ``scores``; ``nms=True`` ends at ``detections (N, 7)``.
    """
    import onnx
    from onnx import TensorProto, helper

    if pp.score_threshold < 0:
        raise ValueError(f"score_threshold must be >= 0 for export, got {pp.score_threshold}")
    g = proto.graph
    names = [o.name for o in g.output]
    if names != ["decoded", "logits"]:
        raise ValueError(f"expected a graph from export_network (outputs decoded, logits), got outputs {names}")
    num_anchors, num_classes = _static_dim(proto, 1, 1), _static_dim(proto, 1, 2) - 1
    if pp.clip_boxes:
        g.initializer.extend([helper.make_tensor("pp_zero", TensorProto.FLOAT, [], [0.0]),
                              helper.make_tensor("pp_one", TensorProto.FLOAT, [], [1.0])])
    g.initializer.extend([
        helper.make_tensor("pp_one_i", TensorProto.INT64, [1], [1]),
        helper.make_tensor("pp_big_i", TensorProto.INT64, [1], [num_classes + 1]),
        helper.make_tensor("pp_two_i", TensorProto.INT64, [1], [2]),
    ])
    g.node.extend(_scores_nodes(pp))
    del g.output[:]
    if nms:
        nodes, consts = _nms_nodes(pp, num_anchors, num_classes)
        g.initializer.extend(consts)
        g.node.extend(nodes)
        g.output.append(helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["num_detections", 7]))
    else:
        g.output.extend([
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", num_anchors, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", num_anchors, num_classes]),
        ])
    onnx.checker.check_model(proto)
    return proto


def export_postprocess_config(
    model: SSD,
    *,
    nms_mode: str | None = None,
    max_detections: int | None = None,
    iou_threshold: float | None = None,
    score_threshold: float | None = None,
    pre_nms_top_k: int | None = None,
) -> PostprocessConfig:
    """The model's post-processing config with the given (non-None) settings replaced; validated."""
    changes = {k: v for k, v in dict(nms_mode=nms_mode, max_detections=max_detections, iou_threshold=iou_threshold,
                                     score_threshold=score_threshold, pre_nms_top_k=pre_nms_top_k).items()
               if v is not None}
    for key in ("max_detections", "pre_nms_top_k"):
        if key in changes and changes[key] < 1:
            raise ValueError(f"{key} must be >= 1, got {changes[key]}")
    return replace(model.config.postprocess, **changes)


def export_detector_onnx(
    model: SSD,
    path: str | os.PathLike[str],
    *,
    nms: bool = True,
    image_size: tuple[int, int] | None = None,
    nms_mode: str | None = None,
    max_detections: int | None = None,
    iou_threshold: float | None = None,
    score_threshold: float | None = None,
    pre_nms_top_k: int | None = None,
    opset: int = 18,
    class_names: list[str] | None = None,
) -> Path:
    """Write ``model`` as ONNX (dynamic batch), ending in ``detections`` (``nms``) or ``boxes``/``scores``.

    Post-processing (score function, box clipping, NMS mode, thresholds, top-k, max detections) is the
    model's ``config.postprocess``; the keyword arguments that are not None replace its settings.
    """
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise ImportError("ONNX export needs onnx and onnxscript: pip install 'mobilenet[export]'") from None
    if not isinstance(model, SSD):
        raise TypeError(f"export_detector_onnx expects an SSD, got {type(model).__name__}")
    pp = export_postprocess_config(model, nms_mode=nms_mode, max_detections=max_detections,
                                   iou_threshold=iou_threshold, score_threshold=score_threshold,
                                   pre_nms_top_k=pre_nms_top_k)
    size = tuple(image_size or model.config.image_size)
    proto = append_postprocess(export_network(model, size, opset=opset), pp, nms=nms)
    meta = {**model.to_metadata(), "image_size": list(size), "nms": pp.nms_mode if nms else None,
            "postprocess": pp.to_dict(), "class_names": class_names}
    proto.metadata_props.add(key="mobilenet", value=json.dumps(meta))
    with atomic_write(path) as f:
        f.write(proto.SerializeToString())
    return Path(path)


def export_detector_int8(
    model: SSD,
    path: str | os.PathLike[str],
    calibration: torch.Tensor,
    *,
    op_types: tuple[str, ...] | None = ("Conv",),
    use_recorded: bool = True,
    symmetric_weights: bool = False,
    bias_correction: bool = True,
    **export_options: Any,
) -> Path:
    """ONNX Runtime int8 (QDQ) detector: :func:`export_detector_onnx`, then static quantization of its convs, as
    :func:`mobilenet.export.onnx.export_onnx_int8` quantizes a classifier.

    ``calibration`` is ``(N, 3, H, W)`` model inputs (normalised as :func:`mobilenet.detection.predict.model_input`
    makes them); activation ranges are their min/max. With ``use_recorded`` a quantization-aware trained import
    (the COCO ``detect.tflite``) keeps the grids it was trained on, its activations' and its weights' (exact);
    otherwise, or with ``symmetric_weights``, every conv kernel gets a per-channel symmetric int8 grid chosen here
    (:func:`~mobilenet.deploy.quantize.symmetric_weight_grids`) and with ``bias_correction`` the biases absorb
    the mean shift of that rounding (:func:`~mobilenet.deploy.quantize.bias_corrected`). By default only the
    convolutions (backbone, extras, heads) are quantized: box decoding, scores and NMS stay float, because
    quantizing them too (``op_types=None``: every op ONNX Runtime can quantize) drops most detections
    (benchmarks/detect_speed.py measures both on the imported COCO SSD). ``export_options`` are
    :func:`export_detector_onnx`'s keyword arguments.
    """
    from ..deploy.quantize import bias_corrected, quantize_onnx, recorded_grids, symmetric_weight_grids

    ranges, grids = recorded_grids(model) if use_recorded else ({}, {})
    net = model
    if symmetric_weights or not grids:
        grids = symmetric_weight_grids(model, every_conv=True, use_recorded=use_recorded)
        if bias_correction:
            net = bias_corrected(model, grids, calibration)  # type: ignore[assignment]
    # the network's initializers are the state dict's names under SSD.decoded's "model."
    ranges = {k if k == "input" else f"{NETWORK_PREFIX}{k}": v for k, v in ranges.items()}
    grids = {f"{NETWORK_PREFIX}{k}": v for k, v in grids.items()}
    with tempfile.TemporaryDirectory() as tmp:
        float_path = export_detector_onnx(net, Path(tmp) / "float.onnx", **export_options)
        return quantize_onnx(float_path, path, calibration, op_types=list(op_types) if op_types else None,
                             activation_ranges=ranges, weight_grids=grids)


def onnx_detections(rows: Any, batch_size: int) -> list[Detections]:
    """The ``detections (N, 7)`` output of an exported graph (numpy) as one ``Detections`` per image."""
    rows = torch.as_tensor(rows)
    per_image = [rows[rows[:, 0] == b] for b in range(batch_size)]
    return [Detections(boxes=r[:, 1:5], scores=r[:, 5], labels=r[:, 6].long()) for r in per_image]
