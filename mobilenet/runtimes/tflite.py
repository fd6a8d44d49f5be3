"""The TF Lite runtime (the LiteRT interpreter from ``ai-edge-litert``) for ``.tflite`` files.

Float files take float input, full-integer files uint8 or int8 *pixels* (the base class converts);
NHWC or NCHW as the file says. A file whose input signature has a dynamic batch (-1) is resized to each
call's batch; the usual fixed batch (1) runs a larger batch in chunks of that size.

``kernels`` selects the interpreter's kernel set, which round int8 activations differently:
``"default"`` (the XNNPACK delegate: what ``Interpreter(model_path)`` and the apps run), ``"builtin"``
(TF Lite's optimized kernels, no delegate) and ``"reference"``.

Metadata: our exports carry a ``"mobilenet"`` entry in the model's metadata list (JSON); Google's files
carry none, so a 1001-way classifier gets the ImageNet class list (``background`` first) and TF's
preprocessing (a uint8 input's own scale and zero point, or [-1, 1] for float), and a detector ending in
``TFLite_Detection_PostProcess`` reads its class names from a ``labelmap.txt`` beside it, as TF Lite's
example apps do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..preprocessing import Preprocessing
from .predictor import METADATA_KEY, Predictor, dequantize, require

NAME = "tflite"
SUFFIXES = (".tflite",)
EXTRA = "tflite"
KERNELS = ("default", "builtin", "reference")
LABEL_FILES = ("labelmap.txt", "labels.txt")
POSTPROCESS_OP = "TFLite_Detection_PostProcess"


def interpreter(path: str | os.PathLike[str], *, kernels: str = "default", threads: int | None = None) -> Any:
    """A LiteRT interpreter for the file with the given kernel set (tensors allocated)."""
    litert = require("ai_edge_litert.interpreter", NAME, EXTRA)
    resolvers = {"default": litert.OpResolverType.AUTO,
                 "builtin": litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                 "reference": litert.OpResolverType.BUILTIN_REF}
    if kernels not in resolvers:
        raise ValueError(f"kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
    try:
        it = litert.Interpreter(model_path=str(path), num_threads=threads,
                                experimental_op_resolver_type=resolvers[kernels])
    except ValueError as e:
        raise ValueError(f"the TF Lite interpreter cannot load {path}: {str(e).splitlines()[0]}") from None
    it.allocate_tensors()
    return it


def read_metadata(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[str]]:
    """(the ``mobilenet`` metadata entry, or ``{}``; the custom op names) of a ``.tflite`` file, read with the TF
    Lite wing's own reader (no runtime needed)."""
    from ..tflite.format import read_tflite

    model = read_tflite(path)
    text = model.metadata.get(METADATA_KEY)
    customs = sorted({op.custom_code for op in model.operators if op.opcode == "CUSTOM" and op.custom_code})
    return (json.loads(text) if text else {}), customs


def foreign_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a ``.tflite`` without our metadata says of itself: a detector ending in ``TFLite_Detection_PostProcess``
    (its class count from the op's options, the names from a ``labelmap.txt`` beside it, as TF Lite's example apps
    read them), or a classifier (a 1000- or 1001-way output: the ImageNet classes, TF's ``background`` first)."""
    from ..tflite.flexbuffers import decode_flexbuffer
    from ..tflite.format import read_labelmap, read_tflite

    model, path = read_tflite(path), Path(path)
    post = [op for op in model.operators if op.opcode == "CUSTOM" and op.custom_code == POSTPROCESS_OP]
    if post:
        options = decode_flexbuffer(post[0].custom_options or b"") or {}
        n = int(options.get("num_classes", 0))
        meta: dict[str, Any] = {"task": "detect", "postprocess_op": options}
        labels = next((path.parent / f for f in LABEL_FILES if (path.parent / f).is_file()), None)
        if labels is not None and n:
            meta.update(class_names=read_labelmap(labels, n), labels_from=str(labels))
        return meta
    meta: dict[str, Any] = {"task": "classify"}
    ops = [op.opcode for op in model.operators]
    last_layer = max((i for i, op in enumerate(ops) if op in ("CONV_2D", "FULLY_CONNECTED")), default=-1)
    if "SOFTMAX" in ops[last_layer + 1:]:  # Google's classifiers end in their softmax: probabilities, not logits
        meta["outputs"] = ["probabilities"]
    n = int(model.outputs[0].shape[-1])
    if n in (1000, 1001):  # Google's ImageNet classifiers: TF's 1001 classes have "background" first
        from ..imagenet_classes import imagenet_class_names, imagenet_wnids

        meta.update(class_names=imagenet_wnids(background=n == 1001),
                    extra={"class_labels": imagenet_class_names(background=n == 1001)})
    return meta


def _quantization(detail: dict[str, Any]) -> tuple[float, int] | None:
    scale, zero = detail["quantization"]
    return (float(scale), int(zero)) if scale else None


class TFLitePredictor(Predictor):
    """A ``.tflite`` file in the LiteRT interpreter."""

    runtime = NAME

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None, kernels: str = "default") -> None:
        it = interpreter(path, kernels=kernels, threads=threads)
        meta, _ = read_metadata(path)
        inp = it.get_input_details()[0]
        shape = [int(v) for v in inp["shape"]]
        if len(shape) != 4:
            raise ValueError(f"{path}: input has shape {shape}, expected 4 dimensions")
        layout = meta.get("input_layout") or ("NHWC" if shape[3] in (1, 3) and shape[1] not in (1, 3) else "NCHW")
        dtype = np.dtype(inp["dtype"]).name
        if dtype not in ("float32", "uint8", "int8"):
            raise ValueError(f"{path}: input type {dtype} is not supported (float32, uint8 or int8)")
        outputs = it.get_output_details()
        if not meta:
            meta = foreign_metadata(path)
        dynamic = int(inp.get("shape_signature", inp["shape"])[0]) == -1
        super().__init__(path, metadata=meta, input_shape=[None if dynamic else shape[0], *shape[1:]], layout=layout,
                         input_dtype=dtype,
                         input_quantization=_quantization(inp), output_names=[o["name"] for o in outputs],
                         threads=threads)
        self.interpreter, self.kernels = it, kernels
        self._input_index, self._batch = inp["index"], shape[0]

    def _default_preprocessing(self) -> Preprocessing:
        if self.input_dtype == "float32":
            return Preprocessing.tf(self.resolution[0])  # TF Lite's float image models take [-1, 1]
        return super()._default_preprocessing()

    def describe(self) -> str:
        import ai_edge_litert

        version = getattr(ai_edge_litert, "__version__", "")
        kernels = {"default": "XNNPACK", "builtin": "builtin kernels", "reference": "reference kernels"}[self.kernels]
        return f"tflite {version} ({kernels}): " + super().describe().split(": ", 1)[1]

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        it = self.interpreter
        if len(x) != self._batch:  # only reached with a dynamic batch (the base class chunks fixed ones)
            it.resize_tensor_input(self._input_index, [len(x), *x.shape[1:]], strict=True)
            it.allocate_tensors()
            self._batch = len(x)
        it.set_tensor(self._input_index, x)
        it.invoke()
        return [dequantize(it.get_tensor(o["index"]), _quantization(o)) for o in it.get_output_details()]


def load(path: str | os.PathLike[str], *, threads: int | None = None, kernels: str = "default") -> TFLitePredictor:
    """A :class:`TFLitePredictor` for a ``.tflite`` file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"TF Lite file not found: {path}")
    return TFLitePredictor(path, threads=threads, kernels=kernels)
