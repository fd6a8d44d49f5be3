"""Full-integer TF Lite classifiers: a MobileNetV1 written as Google's quantized ``.tflite`` files are, op for op.

The graph is the one Google's 2018 quantized MobileNet v1 files have: uint8 input (pixels) ``(1, H, W, C)``,
27 ``CONV_2D``/``DEPTHWISE_CONV_2D`` with uint8 kernels (one scale and zero point per tensor), int32 biases on
the grid ``input_scale x kernel_scale`` and the ReLU6 fused, ``AVERAGE_POOL_2D``, a 1x1 ``CONV_2D`` classifier,
``RESHAPE`` and a uint8 ``SOFTMAX`` (scale 1/256), every activation on a uint8 grid. This per-tensor uint8
scheme is what the Edge TPU compiler and Google's example apps take.

Where the grids come from (:func:`classifier_grids`):

* **recorded**: a quantization-aware trained import (Google's ``*_quant.tflite``) carries the grid of every
  activation and kernel (:class:`mobilenet.weights.Quantization`); the kernels and biases are put back on them
  exactly, so exporting the import again gives back a file whose uint8 outputs equal the original's;
* **calibrated**: otherwise, each activation's range is observed on calibration images (ReLU outputs from 0,
  a ReLU6 output capped at 6, the logits over their range) and each folded kernel gets the min/max grid.

The input takes pixels: with a per-channel mean or std that one uint8 grid cannot express (ImageNet's), the
normalisation is folded into the stem's kernel and bias, so the stem sees the pixels themselves (exact except
where the stem pads its border: there a pixel of 0, where the float model pads a normalised 0).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from ..model import MobileNetV1, SamePad2d
from ..preprocessing import Preprocessing
from ..weights import Quantization, WeightGrid, weights_info
from .grid import ActivationGrid
from .writer import GraphWriter

SOFTMAX_GRID = ActivationGrid(scale=1 / 256, zero_point=0)  # TF Lite's fixed grid of a uint8 softmax output


@dataclass(frozen=True)
class Unit:
    """One conv-bn-act unit, BN folded: kernel OIHW and bias (float64), how it pads, its activation."""

    name: str
    weight: torch.Tensor
    bias: torch.Tensor
    stride: int
    depthwise: bool
    same: bool  # TF's SAME padding (the tf preset, and every stride-1 conv); else an explicit PAD first
    padding: int
    activation: str  # RELU6, RELU or NONE


def unit(name: str, module: nn.Module) -> Unit:
    """A ``conv_bn_act`` Sequential (BN folded) or a plain ``nn.Conv2d`` (a detector's head) as a :class:`Unit`."""
    from ..deploy.fold import fold_conv_bn

    conv = module if isinstance(module, nn.Conv2d) else module.conv
    bn, act = getattr(module, "bn", None), getattr(module, "act", None)
    folded = fold_conv_bn(conv, bn) if isinstance(bn, nn.BatchNorm2d) else conv
    if not isinstance(act, (nn.ReLU6, nn.ReLU, nn.Identity, type(None))):
        raise ValueError(f"{name}: activation {type(act).__name__} has no TF Lite fused equivalent")
    activation = "RELU6" if isinstance(act, nn.ReLU6) else "RELU" if isinstance(act, nn.ReLU) else "NONE"
    bias = folded.bias if folded.bias is not None else torch.zeros(conv.out_channels)
    k = conv.kernel_size[0]
    same = isinstance(getattr(module, "pad", None), SamePad2d) or conv.stride[0] == 1 and conv.padding[0] == k // 2
    return Unit(name, folded.weight.detach().double(), bias.detach().double(), conv.stride[0], conv.groups > 1,
                same, int(conv.padding[0]), activation)


def _is_unit(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and isinstance(getattr(module, "conv", None), nn.Conv2d)


def units(model: MobileNetV1) -> tuple[list[Unit], Unit]:
    """The 27 body units and the classifier (as a 1x1 conv unit) of ``model``, BN folded (float64)."""
    found = [unit(name, m) for name, m in model.named_modules() if _is_unit(m)]
    head = model.classifier
    if isinstance(head, nn.Linear):
        w = head.weight.detach().double()[:, :, None, None]
    elif isinstance(head, nn.Conv2d) and head.kernel_size == (1, 1):
        w = head.weight.detach().double()
    else:
        raise ValueError(f"the classifier is a {type(head).__name__}: a full-integer export needs a linear or 1x1 "
                         "conv classifier (a model with num_classes=0 has none)")
    b = head.bias.detach().double() if head.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    return found, Unit("classifier", w, b, 1, False, True, 0, "NONE")


def _pixel_affine(pre: Preprocessing) -> tuple[ActivationGrid | None, torch.Tensor, torch.Tensor]:
    """(input grid, per-channel scale a, offset c) with normalised = a * pixel + c. The grid is None when one
    uint8 grid cannot express it (per-channel mean/std, or a mean that is not a whole pixel value)."""
    mean, std = torch.tensor(pre.mean, dtype=torch.float64), torch.tensor(pre.std, dtype=torch.float64)
    a, c = 1 / std, -mean / std
    if len(set(pre.mean)) == 1 and len(set(pre.std)) == 1 and float(pre.mean[0]).is_integer() \
            and 0 <= pre.mean[0] <= 255:
        return ActivationGrid(scale=float(1 / pre.std[0]), zero_point=int(pre.mean[0])), a, c
    return None, a, c


@dataclass
class Grids:
    """Every grid the export writes: activations by unit name (``input``, units, ``pool``, ``classifier``),
    kernels by unit name, and whether the pixels' normalisation is folded into the stem."""

    activations: dict[str, ActivationGrid]
    weights: dict[str, WeightGrid]
    source: str  # "recorded" or "calibrated"
    fold_input: bool = False


def _weight_grid(w: torch.Tensor) -> WeightGrid:
    lo, hi = min(float(w.min()), 0.0), max(float(w.max()), 0.0)
    scale = (hi - lo) / 255 or 1.0
    return WeightGrid(scale=(scale,), zero_point=(int(round(-lo / scale)),), quant_min=0, quant_max=255)


@torch.no_grad()
def classifier_grids(model: MobileNetV1, calibration: torch.Tensor | None = None, *, use_recorded: bool = True
                     ) -> Grids:
    """The grids of a full-integer export of ``model`` (module docstring): the recorded ones of a quantized
    import (``use_recorded``), else calibrated on ``calibration`` ``(N, C, H, W)`` normalised images."""
    body, head = units(model)
    names = [u.name for u in body] + ["classifier"]
    q = weights_info(model).quantization
    if use_recorded and q is not None and all(n in q.activations for n in ["input", *names]) \
            and all(f"{n}.conv.weight" in q.weights or n == "classifier" for n in names[:-1]) \
            and "classifier.weight" in q.weights:
        acts = dict(q.activations)
        acts.setdefault("pool", acts[body[-1].name])
        weights = {n: q.weights[f"{n}.conv.weight" if n != "classifier" else "classifier.weight"] for n in names}
        return Grids(acts, weights, "recorded")
    if calibration is None:
        raise ValueError("this model carries no recorded quantization grids: give calibration images")
    from ..predict import model_preprocessing

    pre = model_preprocessing(model)
    input_grid, _, _ = _pixel_affine(pre)
    ranges: dict[str, list[float]] = {}
    modules = dict(model.named_modules())
    hooks = [modules[u.name].register_forward_hook(
        lambda m, i, o, n=u.name: ranges.setdefault(n, [0.0, 0.0]).__setitem__(1, max(ranges[n][1], float(o.max()))))
        for u in body]
    try:
        logits = torch.cat([model.eval()(b) for b in calibration.split(32)])
    finally:
        for h in hooks:
            h.remove()
    acts = {}
    for u in body:
        hi = ranges[u.name][1]
        hi = min(hi, 6.0) if u.activation == "RELU6" else hi
        acts[u.name] = ActivationGrid.from_range(0.0, hi or 1.0)
    acts["pool"] = acts[body[-1].name]
    acts["classifier"] = ActivationGrid.from_range(min(float(logits.min()), 0.0), max(float(logits.max()), 0.0))
    fold = input_grid is None
    acts["input"] = input_grid or ActivationGrid(scale=1.0, zero_point=0)  # folded: the stem sees pixels
    first = body[0]
    if fold:
        _, a, c = _pixel_affine(pre)
        body[0] = _fold_normalisation(first, a, c)
    weights = {u.name: _weight_grid(u.weight) for u in body}
    weights["classifier"] = _weight_grid(head.weight)
    return Grids(acts, weights, "calibrated", fold_input=fold)


def as_recorded(model: MobileNetV1, grids: Grids) -> Quantization:
    """``grids`` as the record a quantized import carries (:class:`mobilenet.weights.Quantization`, with each conv
    output's accumulator scale), so that :func:`mobilenet.tflite.fidelity.uint8_activations` on the BN-folded model
    computes what the written file computes: our own int8 simulation of it."""
    body, head = units(model)
    acts = {k: grids.activations[k] for k in ("input", "pool")}
    previous = grids.activations["input"]
    for u in [*body, head]:
        source = grids.activations["pool"] if u.name == "classifier" else previous
        g = grids.activations[u.name]
        acc = float(np.float32(source.scale) * np.float32(grids.weights[u.name].scale[0]))
        acts[u.name] = replace(g, accumulator_scale=(acc,))
        previous = g
    weights = {(f"{n}.conv.weight" if n != "classifier" else "classifier.weight"): w for n, w in grids.weights.items()}
    return Quantization(activations=acts, weights=weights)


def _fold_normalisation(stem: Unit, a: torch.Tensor, c: torch.Tensor) -> Unit:
    """The stem computing on pixels what it computed on ``a * pixel + c`` (per input channel)."""
    w = stem.weight * a.view(1, -1, 1, 1)
    b = stem.bias + (stem.weight * c.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
    return replace(stem, weight=w, bias=b)


def _quantize_weight(w: torch.Tensor, grid: WeightGrid) -> np.ndarray:
    q = torch.round(w / grid.scale[0]) + grid.zero_point[0]
    return q.clamp(grid.quant_min, grid.quant_max).numpy().astype(np.uint8)


def _grid_kwargs(g: ActivationGrid) -> dict[str, Any]:
    return {"scale": np.float32(g.scale), "zero_point": g.zero_point}


@torch.no_grad()
def classifier_flatbuffer(model: MobileNetV1, grids: Grids, *, metadata: dict[str, bytes] | None = None) -> bytes:
    """The ``.tflite`` bytes of ``model`` on ``grids`` (see the module docstring)."""
    body, head = units(model)
    if grids.fold_input:
        _, a, c = _pixel_affine(_preprocessing(model))
        body[0] = _fold_normalisation(body[0], a, c)
    cfg = model.config
    r = cfg.resolution
    shapes = _shapes(model, r)
    g = GraphWriter()
    acts = grids.activations
    x = g.tensor("input", (1, r, r, cfg.in_chans), "uint8", **_grid_kwargs(acts["input"]))
    current, current_grid = x, acts["input"]
    for u in [*body, head]:
        if u.name == "classifier":  # the average pool first: the last map averaged, on the pool's grid
            last = shapes[body[-1].name]
            pooled = g.tensor("pool", (1, 1, 1, last[3]), "uint8", **_grid_kwargs(acts["pool"]))
            g.operator("AVERAGE_POOL_2D", [current], [pooled], padding="VALID", strides=(2, 2),
                       filter=(last[1], last[2]))
            current, current_grid = pooled, acts["pool"]
        out_shape = (1, 1, 1, head.weight.shape[0]) if u.name == "classifier" else shapes[u.name]
        y = _conv(g, u, current, current_grid, acts[u.name], grids.weights[u.name], out_shape,
                  shapes.get(f"{u.name}:in"), _activation(u, acts[u.name], grids.source))
        current, current_grid = y, acts[u.name]
    n = head.weight.shape[0]
    shape = g.constant("logits/shape", np.array([1, n], dtype=np.int32))
    logits = g.tensor("logits", (1, n), "uint8", **_grid_kwargs(acts["classifier"]))
    g.operator("RESHAPE", [current, shape], [logits], new_shape=(1, n))
    probs = g.tensor("probabilities", (1, n), "uint8", **_grid_kwargs(SOFTMAX_GRID))
    g.operator("SOFTMAX", [logits], [probs], beta=1.0)
    return g.finish([x], [probs], metadata=metadata)


def _activation(u: Unit, grid: ActivationGrid, source: str) -> str:
    """The fused activation to write. On a recorded grid, the one that reproduces its clamp exactly: the model's
    when the grid was narrowed by it, else NONE (the clamp to 0..255 is then the whole story: Google's SSD file
    fuses no ReLU6 into its backbone, its grids start at 0 instead)."""
    if source != "recorded" or u.activation == "NONE":
        return u.activation
    narrowed = grid.quant_min > 0 or grid.quant_max < 255
    return u.activation if narrowed else "NONE"


def _conv(g: GraphWriter, u: Unit, x: int, x_grid: ActivationGrid, out_grid: ActivationGrid, wgrid: WeightGrid,
          out_shape: tuple[int, ...], in_shape: tuple[int, ...] | None, activation: str) -> int:
    """Write one conv unit reading tensor ``x`` (on ``x_grid``): an explicit PAD first where it pads
    symmetrically, uint8 kernel, int32 bias on the accumulator's grid; returns its output tensor."""
    if not u.same:  # explicit symmetric padding (the paper preset at stride 2): PAD pads with the zero point
        _, h, wd, ch = in_shape  # type: ignore[misc]
        pads = g.constant(f"{u.name}/paddings",
                          np.array([[0, 0], [u.padding] * 2, [u.padding] * 2, [0, 0]], dtype=np.int32))
        padded = g.tensor(f"{u.name}/padded", (1, h + 2 * u.padding, wd + 2 * u.padding, ch), "uint8",
                          **_grid_kwargs(x_grid))
        g.operator("PAD", [x, pads], [padded])
        x = padded
    # OIHW -> OHWI (conv) or 1HWC (depthwise: channels last, multiplier 1)
    kernel = (u.weight.permute(1, 2, 3, 0) if u.depthwise else u.weight.permute(0, 2, 3, 1)).contiguous()
    wq = g.constant(f"{u.name}/weights", _quantize_weight(kernel, wgrid), scale=np.float32(wgrid.scale[0]),
                    zero_point=wgrid.zero_point[0])
    # the bias lives on the accumulator's grid: input scale x kernel scale, as float32 products
    bias_scale = np.float32(x_grid.scale) * np.float32(wgrid.scale[0])
    bq = torch.round(u.bias / float(bias_scale)).clamp(-(2 ** 31), 2 ** 31 - 1).numpy().astype(np.int32)
    b = g.constant(f"{u.name}/bias", bq, scale=bias_scale, zero_point=0)
    y = g.tensor(u.name, out_shape, "uint8", **_grid_kwargs(out_grid))
    g.operator("DEPTHWISE_CONV_2D" if u.depthwise else "CONV_2D", [x, wq, b], [y],
               padding="SAME" if u.same else "VALID", stride=u.stride, activation=activation)
    return y


def _preprocessing(model: MobileNetV1) -> Preprocessing:
    from ..predict import model_preprocessing

    return model_preprocessing(model)


def _shapes(model: MobileNetV1, r: int) -> dict[str, tuple[int, ...]]:
    """NHWC shape of every unit's input (``name:in``) and output at input size ``r``."""
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Sequential) and isinstance(getattr(module, "conv", None), nn.Conv2d):
            def hook(m: nn.Module, i: Any, o: torch.Tensor, n: str = name) -> None:
                shapes[f"{n}:in"] = tuple(i[0].permute(0, 2, 3, 1).shape)
                shapes[n] = tuple(o.permute(0, 2, 3, 1).shape)
            hooks.append(module.register_forward_hook(hook))
    try:
        model.eval()(torch.zeros(1, model.config.in_chans, r, r))
    finally:
        for h in hooks:
            h.remove()
    return shapes


# ---------------------------------------------------------------------------------------------------------------
# The SSD: Google's detect.tflite graph, ending in TFLite_Detection_PostProcess.
# ---------------------------------------------------------------------------------------------------------------
POSTPROCESS_OP = "TFLite_Detection_PostProcess"
TF_BOX_ORDER = (1, 0, 3, 2)  # TF's (t_y, t_x, t_h, t_w) from our (t_x, t_y, t_w, t_h): the same swap both ways


def ssd_units(model: nn.Module) -> tuple[list[Unit], list[str], list[Unit], list[Unit]]:
    """(backbone and extra units in order, the names of the six units feeding the heads, box heads, class
    heads) of an SSD (read by attribute: ``backbone``, ``extras``, ``box_heads``, ``cls_heads``)."""
    backbone = model.backbone
    body = [unit(f"backbone.{n}", m) for n, m in backbone.named_modules() if _is_unit(m)]
    wanted = sorted({int(f["module"].split(".")[1]) for f in backbone.feature_info})[-2:]
    feeds = [f"backbone.blocks.{i}.pw" for i in wanted]
    for k, block in enumerate(model.extras):
        parts = [(f"extras.{k}.{n}", m) for n, m in block.named_children() if _is_unit(m)]
        body += [unit(n, m) for n, m in parts]
        feeds.append(parts[-1][0])
    heads = []
    for kind in ("box_heads", "cls_heads"):
        found = []
        for i, head in enumerate(getattr(model, kind)):
            if not isinstance(head, nn.Conv2d):
                raise ValueError(f"{kind}.{i} is a {type(head).__name__}: a full-integer export takes conv heads "
                                 "(not the SSDLite ones)")
            u = unit(f"{kind}.{i}", head)
            if kind == "box_heads":  # per anchor, TF's order of the 4 box encodings
                a = u.weight.shape[0] // 4
                perm = torch.tensor([4 * j + t for j in range(a) for t in TF_BOX_ORDER])
                u = replace(u, weight=u.weight[perm], bias=u.bias[perm])
            found.append(u)
        heads.append(found)
    return body, feeds, heads[0], heads[1]


@torch.no_grad()
def ssd_grids(model: nn.Module, calibration: torch.Tensor | None = None, *, use_recorded: bool = True) -> Grids:
    """The grids of a full-integer SSD: recorded (an imported ``detect.tflite``), else calibrated on images."""
    from ..weights import BOX_ENCODINGS, CLASS_LOGITS, CLASS_SCORES

    body, feeds, boxes, classes = ssd_units(model)
    names = [u.name for u in body + boxes + classes]
    q = weights_info(model).quantization

    def weight_key(n: str) -> str:
        return f"{n}.weight" if n.split(".")[0] in ("box_heads", "cls_heads") else f"{n}.conv.weight"

    points = ["input", BOX_ENCODINGS, CLASS_LOGITS]
    if use_recorded and q is not None and all(n in q.activations for n in names + points) \
            and all(weight_key(n) in q.weights for n in names):
        acts = dict(q.activations)
        acts.setdefault(CLASS_SCORES, SOFTMAX_GRID)
        return Grids(acts, {n: q.weights[weight_key(n)] for n in names}, "recorded")
    if calibration is None:
        raise ValueError("this detector carries no recorded quantization grids: give calibration images")
    cfg = model.config
    pre = Preprocessing(resolution=cfg.image_size[0], mean=cfg.pixel_mean, std=cfg.pixel_std)
    input_grid, a, c = _pixel_affine(pre)
    ranges: dict[str, list[float]] = {}
    modules = dict(model.named_modules())

    def record(n: str) -> Any:
        def hook(m: nn.Module, i: Any, o: torch.Tensor) -> None:
            lo, hi = ranges.setdefault(n, [0.0, 0.0])
            ranges[n] = [min(lo, float(o.min())), max(hi, float(o.max()))]
        return hook

    hooks = [modules[n].register_forward_hook(record(n)) for n in names]
    try:
        outs = [model.eval()(b) for b in calibration.split(16)]
    finally:
        for h in hooks:
            h.remove()
    box = torch.cat([o[0] for o in outs])
    logits = torch.cat([o[1] for o in outs])
    acts = {}
    for u in body + boxes + classes:
        lo, hi = ranges[u.name]
        if u.activation in ("RELU", "RELU6"):
            lo, hi = 0.0, (min(hi, 6.0) if u.activation == "RELU6" else hi)
        acts[u.name] = ActivationGrid.from_range(min(lo, 0.0), max(hi, 0.0) or 1.0)
    acts[BOX_ENCODINGS] = ActivationGrid.from_range(min(float(box.min()), 0.0), max(float(box.max()), 0.0))
    acts[CLASS_LOGITS] = ActivationGrid.from_range(min(float(logits.min()), 0.0), max(float(logits.max()), 0.0))
    acts[CLASS_SCORES] = SOFTMAX_GRID
    fold = input_grid is None
    acts["input"] = input_grid or ActivationGrid(scale=1.0, zero_point=0)
    weighted = body + boxes + classes
    if fold:
        weighted[0] = _fold_normalisation(weighted[0], a, c)
    return Grids(acts, {u.name: _weight_grid(u.weight) for u in weighted}, "calibrated", fold_input=fold)


def postprocess_options(model: nn.Module) -> dict[str, Any]:
    """The ``TFLite_Detection_PostProcess`` options: an imported file's own, else the model's post-processing."""
    source = weights_info(model).source
    recorded = (source.details.get("postprocess_op") if source is not None else None) or {}
    if recorded:
        return dict(recorded)
    cfg = model.config
    pp = cfg.postprocess
    sx, sy, sw, sh = cfg.scale_factors  # ours (x, y, w, h) -> TF's y, x, h, w scales
    options: dict[str, Any] = {
        "max_detections": int(pp.max_detections), "max_classes_per_detection": 1,
        "nms_score_threshold": float(pp.score_threshold), "nms_iou_threshold": float(pp.iou_threshold),
        "num_classes": int(cfg.num_classes), "y_scale": float(sy), "x_scale": float(sx), "h_scale": float(sh),
        "w_scale": float(sw)}
    if pp.nms_mode == "per_class":  # TF's "regular" NMS: per class, then the best over classes
        options.update(use_regular_nms=True, detections_per_class=int(pp.pre_nms_top_k))
    return options


@torch.no_grad()
def ssd_flatbuffer(model: nn.Module, grids: Grids, *, metadata: dict[str, bytes] | None = None) -> bytes:
    """The ``.tflite`` bytes of an SSD on ``grids``: uint8 pixels in, the four float outputs of
    ``TFLite_Detection_PostProcess`` (boxes, classes, scores, count) out, as Google's ``detect.tflite``."""
    from ..weights import BOX_ENCODINGS, CLASS_LOGITS, CLASS_SCORES
    from .writer import flexbuffer_map

    cfg = model.config
    if cfg.postprocess.score_fn not in ("sigmoid", "softmax"):
        raise ValueError(f"score function {cfg.postprocess.score_fn!r}: the export writes sigmoid or softmax")
    body, feeds, boxes, classes = ssd_units(model)
    if grids.fold_input:
        pre = Preprocessing(resolution=cfg.image_size[0], mean=cfg.pixel_mean, std=cfg.pixel_std)
        _, a, c = _pixel_affine(pre)
        body[0] = _fold_normalisation(body[0], a, c)
    h, w = cfg.image_size
    shapes = _unit_shapes(model, (h, w), [u.name for u in body + boxes + classes])
    acts = grids.activations
    g = GraphWriter()
    x = g.tensor("normalized_input_image_tensor", (1, h, w, 3), "uint8", **_grid_kwargs(acts["input"]))
    current, current_grid = x, acts["input"]
    out: dict[str, tuple[int, ActivationGrid]] = {}
    for u in body:  # the backbone, then the extras, in order (each extra reads the one before)
        y = _conv(g, u, current, current_grid, acts[u.name], grids.weights[u.name], shapes[u.name],
                  shapes.get(f"{u.name}:in"), _activation(u, acts[u.name], grids.source))
        out[u.name] = (y, acts[u.name])
        current, current_grid = y, acts[u.name]
    n_cls = cfg.num_classes + 1
    box_parts, cls_parts = [], []
    for i, name in enumerate(feeds):
        src, src_grid = out[name]
        for u, parts, is_box in ((boxes[i], box_parts, True), (classes[i], cls_parts, False)):
            y = _conv(g, u, src, src_grid, acts[u.name], grids.weights[u.name], shapes[u.name], None, "NONE")
            _, fh, fw, ch = shapes[u.name]
            count = fh * fw * (ch // (4 if is_box else n_cls))
            shape = (1, count, 1, 4) if is_box else (1, count, n_cls)
            r = g.tensor(f"{u.name}/reshape", shape, "uint8", **_grid_kwargs(acts[u.name]))
            g.operator("RESHAPE", [y, g.constant(f"{u.name}/shape", np.array(shape, dtype=np.int32))], [r],
                       new_shape=shape)
            parts.append(r)
    anchors_total = sum(g.tensors[p].shape[1] for p in box_parts)
    concat = g.tensor("concat", (1, anchors_total, 1, 4), "uint8", **_grid_kwargs(acts[BOX_ENCODINGS]))
    g.operator("CONCATENATION", box_parts, [concat], axis=1)
    box = g.tensor("Squeeze", (1, anchors_total, 4), "uint8", **_grid_kwargs(acts[BOX_ENCODINGS]))
    g.operator("RESHAPE", [concat, g.constant("Squeeze/shape", np.array([1, anchors_total, 4], dtype=np.int32))],
               [box], new_shape=(1, anchors_total, 4))
    logits = g.tensor("concat_1", (1, anchors_total, n_cls), "uint8", **_grid_kwargs(acts[CLASS_LOGITS]))
    g.operator("CONCATENATION", cls_parts, [logits], axis=1)
    scores = g.tensor("convert_scores", (1, anchors_total, n_cls), "uint8", **_grid_kwargs(acts[CLASS_SCORES]))
    g.operator("LOGISTIC" if cfg.postprocess.score_fn == "sigmoid" else "SOFTMAX", [logits], [scores],
               **({} if cfg.postprocess.score_fn == "sigmoid" else {"beta": 1.0}))
    table = model.anchors((h, w), device="cpu").detach().float()[:, list(TF_BOX_ORDER)]  # (yc, xc, h, w)
    if table.shape[0] != anchors_total:
        raise ValueError(f"{table.shape[0]} anchors, the heads predict {anchors_total}")
    # uint8 anchors on a min/max grid, as TF's converter writes them: with float32 anchors the op's decoding
    # differs (measured on the COCO SSD: the same scores and boxes in, other detections out)
    a_grid = ActivationGrid.from_range(min(float(table.min()), 0.0), float(table.max()))
    anchors = g.constant("anchors", a_grid.quantize(table).numpy().astype(np.uint8), **_grid_kwargs(a_grid))
    outputs = [g.tensor(f"{POSTPROCESS_OP}{suffix}", (), "float32") for suffix in ("", ":1", ":2", ":3")]
    g.operator("CUSTOM", [box, scores, anchors], outputs, custom_code=POSTPROCESS_OP,
               custom_options=flexbuffer_map(postprocess_options(model)))
    return g.finish([x], outputs, metadata=metadata)


def _unit_shapes(model: nn.Module, size: tuple[int, int], names: list[str]) -> dict[str, tuple[int, ...]]:
    """NHWC shapes of the named modules' inputs (``name:in``) and outputs at input ``size``."""
    shapes: dict[str, tuple[int, ...]] = {}
    modules = dict(model.named_modules())

    def record(n: str) -> Any:
        def hook(m: nn.Module, i: Any, o: torch.Tensor) -> None:
            shapes[f"{n}:in"] = tuple(i[0].permute(0, 2, 3, 1).shape)
            shapes[n] = tuple(o.permute(0, 2, 3, 1).shape)
        return hook

    hooks = [modules[n].register_forward_hook(record(n)) for n in names]
    try:
        model.eval()(torch.zeros(1, 3, *size))
    finally:
        for h in hooks:
            h.remove()
    return shapes
