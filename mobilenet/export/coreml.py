"""Core ML: an ML Program package (``.mlpackage``) via ``coremltools``, for iOS 16 / macOS 13 and later.

The graph is :func:`~mobilenet.deploy.static.static_model`: the tf preset's SAME padding frozen to constant
pads for the fixed input size (Core ML cannot convert padding computed from the input shape at run time).
The input is an ``image`` (``ImageType``: RGB or BGR pixels 0..255, the app hands over a ``CVPixelBuffer``)
and the preprocessing's normalisation ``(pixel - mean) / std`` is the graph's first op, exact for per-channel
mean/std (``ImageType``'s own scale is one number for all channels). A classifier ends in a softmax and
carries its class labels (``ClassifierConfig``: outputs ``classLabel`` and ``classLabel_probs``); a detector
outputs ``decoded`` boxes and ``logits`` (:func:`~mobilenet.export.metadata.detector_network`).
``user_defined_metadata["mobilenet"]`` holds the metadata (:mod:`mobilenet.export.metadata`).

**Core ML runs only on Apple platforms**: on Linux the package is converted and inspected
(:func:`inspect_coreml`: spec version, inputs and outputs with shapes, class labels, the op list, metadata)
but no prediction is run, so numerical parity with PyTorch is not checked here.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..deploy.static import static_model
from ..preprocessing import Preprocessing
from ..runtimes.predictor import METADATA_KEY, require
from ..runtimes.quiet import quiet_stderr
from .metadata import artifact_metadata, detector_network, input_size, is_detector

PRECISIONS = ("float16", "float32")


class _Normalised(nn.Module):
    """pixels (B, 3, H, W) in 0..255 -> (pixels - mean) / std -> the network; a softmax for a classifier."""

    def __init__(self, net: nn.Module, pre: Preprocessing, softmax: bool) -> None:
        super().__init__()
        self.net, self.softmax = net, softmax
        self.register_buffer("mean", torch.tensor(pre.mean).view(1, 3, 1, 1))
        self.register_buffer("inv_std", 1 / torch.tensor(pre.std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> Any:
        out = self.net((x - self.mean) * self.inv_std)
        return out.softmax(dim=1) if self.softmax else out


def _write_package(model: Any, path: Path) -> None:
    # An .mlpackage is a folder: written beside, then swapped in, so a reader never sees half of one.
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        fresh = Path(tmp) / path.name
        model.save(str(fresh))
        old = Path(tmp) / "old"
        if path.exists():
            os.replace(path, old)
        os.replace(fresh, path)
        shutil.rmtree(old, ignore_errors=True)


def export_coreml(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    resolution: int | None = None,
    precision: str = "float16",
) -> Path:
    """Write ``model`` (classifier or SSD) as a Core ML ML Program package; see the module docstring.

    ``precision``: ``float16`` (Core ML's default for ML Programs; what runs on the Neural Engine) or
    ``float32``.
    """
    with quiet_stderr():  # coremltools reports on import that it cannot load its macOS-only parts
        ct = require("coremltools", "coreml export", "coreml")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    path = Path(path)
    if path.suffix != ".mlpackage":
        raise ValueError(f"a Core ML ML Program is written as a .mlpackage folder, got {path.name}")
    size = input_size(model, resolution)
    detector = is_detector(model)
    meta = artifact_metadata(model, size=size, input_dtype="uint8", precision=precision,
                             outputs=["decoded", "logits"] if detector else ["classLabel", "classLabel_probs"])
    pre = Preprocessing.from_dict(meta["preprocessing"])
    if not detector and model.config.in_chans != 3:  # type: ignore[union-attr]
        raise ValueError(f"Core ML image input needs 3 channels, the model has {model.config.in_chans}")
    net = detector_network(model, size) if detector else static_model(model, size)
    wrapped = _Normalised(net, pre, softmax=not detector).eval()
    example = torch.rand(1, 3, *size) * 255
    names = meta.get("class_names") or [str(i) for i in range(model.config.num_classes)]  # type: ignore[union-attr]
    kwargs: dict[str, Any] = {}
    if detector:
        kwargs["outputs"] = [ct.TensorType(name="decoded"), ct.TensorType(name="logits")]
    else:
        kwargs["classifier_config"] = ct.ClassifierConfig([str(n) for n in names])
    color = ct.colorlayout.BGR if pre.channel_order == "BGR" else ct.colorlayout.RGB
    with warnings.catch_warnings(), torch.no_grad(), quiet_stderr():  # coremltools logs every pass
        warnings.simplefilter("ignore")
        program = torch.export.export(wrapped, (example,)).run_decompositions({})
        ml = ct.convert(
            program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
            inputs=[ct.ImageType(name="image", shape=(1, 3, *size), channel_first=True, color_layout=color)],
            compute_precision=ct.precision.FLOAT16 if precision == "float16" else ct.precision.FLOAT32,
            skip_model_load=True,  # loading compiles the model, which only Apple platforms can do
            **kwargs)
    ml.user_defined_metadata[METADATA_KEY] = json.dumps(meta)
    ml.short_description = (f"MobileNet v1 {'SSD detector' if detector else 'classifier'}, {size[0]}x{size[1]} "
                            f"{pre.channel_order} image input")
    _write_package(ml, path)
    return path


def inspect_coreml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What can be checked of a Core ML package without running it (see the module docstring)."""
    ct = require("coremltools", "coreml inspection", "coreml")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Core ML package not found: {path}")
    spec = ct.utils.load_spec(str(path))

    def feature(f: Any) -> dict[str, Any]:
        kind = f.type.WhichOneof("Type")
        out: dict[str, Any] = {"name": f.name, "type": kind}
        if kind == "imageType":
            out.update(width=f.type.imageType.width, height=f.type.imageType.height,
                       color=ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(f.type.imageType.colorSpace))
        elif kind == "multiArrayType":
            out["shape"] = list(f.type.multiArrayType.shape)
        return out

    ops: dict[str, int] = {}
    labels: list[str] = []
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                ops[op.type] = ops.get(op.type, 0) + 1
                if op.type == "classify":  # ClassifierConfig's labels are a constant input of this op
                    values = op.inputs["classes"].arguments[0].value.immediateValue.list.values
                    labels = [v.immediateValue.tensor.strings.values[0] for v in values]
    kind = spec.WhichOneof("Type")
    meta = dict(spec.description.metadata.userDefined)
    return {
        "type": kind, "spec_version": spec.specificationVersion,
        "inputs": [feature(f) for f in spec.description.input],
        "outputs": [feature(f) for f in spec.description.output],
        "predicted_feature": spec.description.predictedFeatureName or None,
        "class_labels": labels,
        "ops": dict(sorted(ops.items())),
        "metadata": json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else None,
    }
