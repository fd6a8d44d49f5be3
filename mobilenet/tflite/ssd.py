"""Import the COCO SSD-MobileNet v1 from TF Lite's ``detect.tflite`` (TF Object Detection API export).

The file holds a uint8 graph: MobileNet v1 (``FeatureExtractor/MobilenetV1/...``, BatchNorm folded into
conv weights + bias), four extra blocks (``Conv2d_13_pointwise_{1,2}_Conv2d_{k}_...``), six
``BoxPredictor_i`` (box and class 1x1 convs), a sigmoid, and the custom ``TFLite_Detection_PostProcess``
op whose options give the box-coder scales (y 10, x 10, h 5, w 5), NMS IoU/score thresholds and max
detections, and whose third input is the anchors as a constant (ycenter, xcenter, h, w) tensor.

We dequantize every weight, put folded biases into the BatchNorm ``bias`` (gamma 1, mean 0, var
1 - eps, so BN is the identity plus bias), reorder TF's (t_y, t_x, t_h, t_w) box outputs to our
(t_x, t_y, t_w, t_h), and configure post-processing as the op does (sigmoid scores, one class per
anchor, class-agnostic NMS, boxes not clipped). Width multiplier, input size and class count are read
from the file. The file's anchors are stored uint8-quantized (step 0.0065, about 2 px at 300 px);
``anchors.py`` regenerates them to within half a step, but on small objects (KITTI cars a few pixels
tall) that half step costs IoU, so the model keeps the file's own anchors (``anchors_in_weights``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import load_state_strict
from ..detection.postprocess import PostprocessConfig
from ..detection.ssd import SSD, SSDConfig
from ..model import STEM_CHANNELS
from ..weights import Quantization, Source, WeightGrid, WeightsInfo
from .fidelity import SCORES, SSD_OUTPUTS
from .format import TFLiteModel, TFLiteOperator, read_labelmap, read_tflite
from .grid import ActivationGrid, conv_output_grid, tensor_grid, weight_grid

POSTPROCESS_OP = "TFLite_Detection_PostProcess"
_BACKBONE = re.compile(r"FeatureExtractor/MobilenetV1/MobilenetV1/Conv2d_(\d+)(?:_(depthwise|pointwise))?/")
_EXTRA = re.compile(r"FeatureExtractor/MobilenetV1/Conv2d_13_pointwise_([12])_Conv2d_(\d+)_")
_PREDICTOR = re.compile(r"BoxPredictor_(\d+)/(BoxEncodingPredictor|ClassPredictor)/")
TF_TO_OURS_BOX = (1, 0, 3, 2)  # our (t_x, t_y, t_w, t_h) from TF's (t_y, t_x, t_h, t_w)


def is_detection_tflite(path: str | os.PathLike[str]) -> bool:
    """True if the file ends in TF Lite's detection post-processing op (an SSD export)."""
    return any(op.custom_code == POSTPROCESS_OP for op in read_tflite(path).operators)


def _weights(model: TFLiteModel, op: Any) -> tuple[np.ndarray, np.ndarray]:
    w = model.stored(op.inputs[1]).dequantize()
    b = model.stored(op.inputs[2]).dequantize() if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
    if w is None:
        raise ValueError(f"{model.path}: op {op.index} ({op.opcode}) has no constant weights")
    if op.opcode == "DEPTHWISE_CONV_2D":
        w = w.transpose(3, 0, 1, 2)  # (1, kh, kw, C) -> (C, 1, kh, kw)
    else:
        w = w.transpose(0, 3, 1, 2)  # (O, kh, kw, I) -> (O, I, kh, kw)
    if b is None:
        b = np.zeros(w.shape[0], dtype=np.float32)
    return w, b


def _module_for(name: str) -> tuple[str, bool] | None:
    """TF weight name -> (our module prefix, has BatchNorm) or None if not a weight we map."""
    m = _BACKBONE.match(name)
    if m:
        i, kind = int(m.group(1)), m.group(2)
        if i == 0:
            return "backbone.stem", True
        return f"backbone.blocks.{i - 1}.{'dw' if kind == 'depthwise' else 'pw'}", True
    m = _EXTRA.match(name)
    if m:
        part, k = m.groups()
        return f"extras.{int(k) - 2}.{'reduce' if part == '1' else 'conv'}", True
    m = _PREDICTOR.match(name)
    if m:
        i, kind = m.groups()
        return f"{'box_heads' if kind.startswith('Box') else 'cls_heads'}.{i}", False
    return None


def file_anchors(model: TFLiteModel) -> torch.Tensor:
    """The post-processing op's constant anchors as our (A, 4) cx, cy, w, h (dequantized)."""
    op = next(op for op in model.operators if op.custom_code == POSTPROCESS_OP)
    a = model.tensors[op.inputs[2]].dequantize()
    if a is None:
        raise ValueError(f"{model.path}: the anchors input of {POSTPROCESS_OP} is not a constant")
    return torch.from_numpy(a[:, [1, 0, 3, 2]].astype(np.float32))  # (yc, xc, h, w) -> (xc, yc, w, h)


def activation_grids(model: TFLiteModel, named: list[tuple[TFLiteOperator, str]], post: TFLiteOperator
                     ) -> dict[str, ActivationGrid]:
    """The uint8 grid of every activation the interpreter quantizes, keyed as ``mobilenet.tflite.fidelity`` reads.

    ``input``; each conv's output under our module name (backbone units, extras, box/class heads;
    a fused ReLU6 narrows the grid; with the accumulator scale it is requantized from); what the
    post-processing op reads: the concatenated box encodings (``box_encodings``), the concatenated
    logits before the ``LOGISTIC`` (``class_logits``) and the logistic's output (``class_scores``).
    The per-head ``RESHAPE`` ops keep their input's grid; the ``CONCATENATION`` requantizes every
    head onto its own grid, hence two roundings.
    Empty for a float file.
    """
    grids: dict[str, ActivationGrid | None] = {"input": tensor_grid(model.inputs[0])}
    for op, name in named:
        grids[name] = conv_output_grid(model, op)
    grids[SSD_OUTPUTS[0]] = tensor_grid(model.tensors[post.inputs[0]])
    scores = model.producers.get(post.inputs[1])
    if scores is not None and scores.opcode == "LOGISTIC":
        grids[SSD_OUTPUTS[1]] = tensor_grid(model.tensors[scores.inputs[0]])
        grids[SCORES] = tensor_grid(model.tensors[post.inputs[1]])
    else:  # scores computed elsewhere: the op reads the logits' grid only
        grids[SSD_OUTPUTS[1]] = tensor_grid(model.tensors[post.inputs[1]])
    return {k: g for k, g in grids.items() if g is not None}


def import_detect_tflite(path: str | os.PathLike[str], labelmap: str | os.PathLike[str] | None = None) -> SSD:
    """Read ``detect.tflite`` into an ``SSD`` (eval mode) with ``weights_info`` (class names, source, grids).

    ``labelmap`` defaults to ``labelmap.txt`` beside the file; without one, classes are named ``class_k``.
    """
    path = Path(path)
    tfl = read_tflite(path)
    post = next((op for op in tfl.operators if op.custom_code == POSTPROCESS_OP), None)
    if post is None:
        raise ValueError(f"{path}: no {POSTPROCESS_OP} op: not a TF Object Detection API SSD export")
    opts = post.custom_options_dict()
    convs = [op for op in tfl.operators if op.opcode in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    named = [(op, _module_for(tfl.tensors[op.inputs[1]].name)) for op in convs]
    unmapped = [tfl.tensors[op.inputs[1]].name for op, m in named if m is None]
    if unmapped:
        raise ValueError(f"{path}: unexpected conv weight {unmapped[0]!r}: not the ssd_mobilenet_v1 layout")
    stem = next(op for op, m in named if m[0] == "backbone.stem")
    width_mult = tfl.tensors[stem.inputs[1]].shape[0] / STEM_CHANNELS
    inp = tfl.inputs[0]
    _, height, width, _ = inp.shape
    if inp.dtype == "uint8" and inp.is_quantized:  # real = (q - zero_point) * scale
        mean, std = float(inp.zero_point[0]), 1.0 / float(inp.scale[0])
    else:  # float input: the OD API's x / 127.5 - 1
        mean, std = 127.5, 127.5
    pp = PostprocessConfig(
        score_threshold=float(opts.get("nms_score_threshold", 1e-8)),
        iou_threshold=float(opts.get("nms_iou_threshold", 0.6)),
        max_detections=int(opts.get("max_detections", 10)),
        pre_nms_top_k=int(opts.get("max_detections", 10)) * 10,
        score_fn="sigmoid",
        nms_mode="per_class" if opts.get("use_regular_nms") else "class_agnostic",
        clip_boxes=False,
    )
    num_classes = int(opts.get("num_classes", 90))
    cfg = SSDConfig(num_classes=num_classes, width_mult=width_mult, image_size=(height, width), preset="tf",
                    head_kernel_size=1,
                    scale_factors=(opts.get("x_scale", 10.0), opts.get("y_scale", 10.0), opts.get("w_scale", 5.0),
                                   opts.get("h_scale", 5.0)),
                    postprocess=pp, pixel_mean=(mean,) * 3, pixel_std=(std,) * 3, anchors_in_weights=True)
    model = SSD(cfg)
    own = model.state_dict()
    state: dict[str, torch.Tensor] = {k: v.clone() for k, v in own.items() if k.endswith("num_batches_tracked")}
    state["anchor_table"] = file_anchors(tfl)
    if state["anchor_table"].shape != own["anchor_table"].shape:
        raise ValueError(f"{path}: {state['anchor_table'].shape[0]} anchors in the file, the ssd_mobilenet_v1 "
                         f"layout at {height}x{width} has {own['anchor_table'].shape[0]}")
    eps = model.backbone.stem.bn.eps
    for op, (prefix, has_bn) in named:
        w, b = _weights(tfl, op)
        wt, bt = torch.from_numpy(np.ascontiguousarray(w)), torch.from_numpy(b.astype(np.float32))
        if has_bn:
            state[f"{prefix}.conv.weight"] = wt
            c = wt.shape[0]
            state[f"{prefix}.bn.weight"] = torch.ones(c)
            state[f"{prefix}.bn.bias"] = bt
            state[f"{prefix}.bn.running_mean"] = torch.zeros(c)
            state[f"{prefix}.bn.running_var"] = torch.full((c,), 1.0 - eps)
            continue
        if prefix.startswith("box_heads"):  # per anchor: TF (ty, tx, th, tw) -> ours (tx, ty, tw, th)
            a = wt.shape[0] // 4
            perm = torch.tensor([4 * i + j for i in range(a) for j in TF_TO_OURS_BOX])
            wt, bt = wt[perm], bt[perm]
        state[f"{prefix}.weight"], state[f"{prefix}.bias"] = wt, bt
    load_state_strict(model, state, str(path))
    if labelmap is None and (path.parent / "labelmap.txt").is_file():
        labelmap = path.parent / "labelmap.txt"
    names = read_labelmap(labelmap, num_classes) if labelmap else [f"class_{k}" for k in range(num_classes)]
    grids = activation_grids(tfl, [(op, m[0]) for op, m in named], post)
    kernels = {f"{prefix}.conv.weight" if has_bn else f"{prefix}.weight": weight_grid(tfl, op.inputs[1])
               for op, (prefix, has_bn) in named}
    # a quantized file: the grids it ran on (mobilenet.tflite.fidelity.uint8_activations, `mobilenet quantize`);
    # the kernels' grids only when every kernel has one (box heads: per tensor, order-free)
    weights = {k: WeightGrid.from_dict(g) for k, g in kernels.items() if g is not None} \
        if all(g is not None for g in kernels.values()) else {}
    model.weights_info = WeightsInfo(  # type: ignore[assignment]
        classes=names, source=Source(format="tflite", file=str(path), details={"postprocess_op": opts}),
        quantization=Quantization(activations=grids, weights=weights) if grids or weights else None)
    return model.eval()
