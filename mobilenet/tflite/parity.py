"""Our imports against the TF Lite interpreter (``ai-edge-litert``) on the same pixels.

Classifiers: :func:`tflite_outputs` gives the interpreter's outputs for the pixels
:func:`mobilenet.convert.parity.photo_pixels` feeds both sides (compared with
:func:`mobilenet.convert.parity.compare`). Detectors (the imported COCO SSD): a reference detection
(score >= ``min_score``) is matched when ours has the same label, IoU >= ``min_iou`` and a score within
``score_tol``. Used by the tests and ``benchmarks/detect_tflite_parity.py``.

The interpreter has three kernel sets for the same uint8 graph (``kernels``): ``"default"`` (the
XNNPACK delegate, what ``Interpreter(model_path)`` runs), ``"builtin"`` (TF Lite's optimized kernels,
no delegate) and ``"reference"`` (its reference kernels). They round intermediate activations
differently, so their detections differ among themselves too (see ``interpreter_parity``); with
``fidelity=True`` ours reproduces the rounding of the kernel set it is compared with.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..detection.boxes import box_iou
from ..detection.postprocess import Detections
from ..detection.ssd import SSD
from .fidelity import SCORES, SSD_OUTPUTS, recorded_activation_grids, uint8_activations
from .format import read_tflite
from .ssd import POSTPROCESS_OP, TF_TO_OURS_BOX


@dataclass
class Parity:
    references: int = 0
    matched: int = 0
    misses: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rate(self) -> float | None:
        return self.matched / self.references if self.references else None


def interpreter(tflite_path: str | os.PathLike[str], *, kernels: str = "default", threads: int = 1) -> Any:
    """A TF Lite interpreter (ai-edge-litert) for the file with the given kernel set, tensors allocated: the TF
    Lite runtime's own (:func:`mobilenet.runtimes.tflite.interpreter`), one thread by default here."""
    from ..runtimes.tflite import interpreter as runtime_interpreter

    return runtime_interpreter(tflite_path, kernels=kernels, threads=threads)


def tflite_outputs(path: str | os.PathLike[str], pixels: np.ndarray) -> np.ndarray:
    """The TF Lite interpreter's (dequantized) outputs for uint8 NHWC pixels, one image at a time."""
    it = interpreter(path)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    scale, zero = out["quantization"]
    results = []
    for px in pixels:
        x = px[None]
        if inp["dtype"] != np.uint8:  # float model: feed [-1, 1] like TF's preprocessing
            x = (x.astype(np.float32) - 127.5) / 127.5
        it.set_tensor(inp["index"], x.astype(inp["dtype"]))
        it.invoke()
        y = it.get_tensor(out["index"])[0]
        results.append((y.astype(np.float32) - zero) * scale if scale else y.astype(np.float32))
    return np.stack(results)


def input_size(it: Any) -> tuple[int, int]:
    """(height, width) of the interpreter's input."""
    return tuple(int(v) for v in it.get_input_details()[0]["shape"][1:3])  # type: ignore[return-value]


def load_pixels(path: str | os.PathLike[str], size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 RGB: the photo resized to ``size`` (height, width), bilinear, as both sides see it."""
    height, width = size
    return np.asarray(Image.open(path).convert("RGB").resize((width, height), Image.BILINEAR))


def file_input(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 pixels -> (1, 3, H, W) float, as the imported model takes the file's uint8 input."""
    return (torch.from_numpy(pixels.copy()).permute(2, 0, 1).float()[None] - 128) / 128


def interpreter_detections(it: Any, pixels: np.ndarray) -> Detections:
    """Run the interpreter on (H, W, 3) uint8 pixels: its detections as our ``Detections`` (xyxy, normalised)."""
    it.set_tensor(it.get_input_details()[0]["index"], pixels[None])
    it.invoke()
    boxes, classes, scores, count = (it.get_tensor(d["index"])[0] for d in it.get_output_details())
    n = int(count)
    return Detections(boxes=torch.from_numpy(boxes[:n][:, [1, 0, 3, 2]].copy()),  # TF: ymin, xmin, ymax, xmax
                      scores=torch.from_numpy(scores[:n].copy()), labels=torch.from_numpy(classes[:n].astype(np.int64)))


def match_detections(ref: Detections, ours: Detections, result: Parity, image: str, *, min_score: float = 0.5,
                     min_iou: float = 0.9, score_tol: float = 0.05) -> None:
    """Count each reference detection scoring >= ``min_score`` into ``result``: matched, or a miss (recorded)."""
    for i in range(len(ref.scores)):
        score = float(ref.scores[i])
        if score < min_score:
            continue
        result.references += 1
        label = int(ref.labels[i])
        iou = box_iou(ref.boxes[i:i + 1].float(), ours.boxes.float())[0] * (ours.labels == label)
        j = int(iou.argmax()) if iou.numel() else -1
        if j >= 0 and iou[j] >= min_iou and abs(float(ours.scores[j]) - score) <= score_tol:
            result.matched += 1
        else:
            result.misses.append({
                "image": image, "class": label, "tflite_score": round(score, 3),
                "best_iou": round(float(iou[j]), 3) if j >= 0 else 0.0,
                "our_score": round(float(ours.scores[j]), 3) if j >= 0 else None})


def tflite_parity(
    model: SSD,
    tflite_path: str | os.PathLike[str],
    images: Iterable[Path],
    *,
    min_score: float = 0.5,
    min_iou: float = 0.9,
    score_tol: float = 0.05,
    threads: int = 1,
    fidelity: bool = False,
    kernels: str = "default",
) -> Parity:
    """Run the interpreter and ``model`` on each image resized to the model's input (bilinear, uint8).

    ``fidelity=True`` runs ``model`` on the file's uint8 activation grids
    (:func:`mobilenet.tflite.fidelity.uint8_activations`), as the interpreter computes;
    ``kernels``: which of the interpreter's kernel sets is the reference (see the module doc), and
    whose requantization the fidelity run reproduces.
    """
    it = interpreter(tflite_path, kernels=kernels, threads=threads)
    size = input_size(it)
    result = Parity()
    with uint8_activations(model, kernels=kernels) if fidelity else nullcontext():
        for path in images:
            pixels = load_pixels(path, size)
            ref = interpreter_detections(it, pixels)
            with torch.inference_mode():
                ours = model.detect(file_input(pixels))[0]
            match_detections(ref, ours, result, Path(path).name, min_score=min_score, min_iou=min_iou,
                             score_tol=score_tol)
    return result


@dataclass
class TensorParity:
    """How many photos gave the interpreter's exact uint8 post-processing inputs (box encodings, scores)."""

    photos: int = 0
    equal_photos: int = 0
    box_values_differing: int = 0
    score_values_differing: int = 0


def uint8_tensor_parity(model: SSD, tflite_path: str | os.PathLike[str], images: Iterable[Path], *,
                        kernels: str = "default", threads: int = 1) -> TensorParity:
    """Ours under :func:`~mobilenet.tflite.fidelity.uint8_activations` vs the interpreter, before NMS.

    Compares the uint8 box encodings and class scores the ``TFLite_Detection_PostProcess`` op reads
    (ours: the model's outputs as integers of the recorded ``box_encodings``/``class_scores`` grids).
    """
    post = next(op for op in read_tflite(tflite_path).operators if op.custom_code == POSTPROCESS_OP)
    grids = recorded_activation_grids(model)
    box_grid, score_grid = grids[SSD_OUTPUTS[0]], grids[SCORES]
    it = interpreter(tflite_path, kernels=kernels, threads=threads)
    size = input_size(it)
    result = TensorParity()
    with uint8_activations(model, kernels=kernels):
        for path in images:
            pixels = load_pixels(path, size)
            it.set_tensor(it.get_input_details()[0]["index"], pixels[None])
            it.invoke()
            ref_boxes, ref_scores = (torch.from_numpy(it.get_tensor(i)[0].astype(np.int64)) for i in post.inputs[:2])
            with torch.inference_mode():
                boxes, logits = model(file_input(pixels))
            ours_boxes = box_grid.integers(boxes[0])[:, list(TF_TO_OURS_BOX)]  # back to TF's (ty, tx, th, tw)
            ours_scores = score_grid.integers(torch.sigmoid(logits[0].double()))
            nb, ns = int((ours_boxes != ref_boxes).sum()), int((ours_scores != ref_scores).sum())
            result.photos += 1
            result.equal_photos += int(nb == 0 and ns == 0)
            result.box_values_differing += nb
            result.score_values_differing += ns
    return result


def interpreter_parity(
    tflite_path: str | os.PathLike[str],
    images: Iterable[Path],
    *,
    reference: str = "default",
    other: str = "reference",
    min_score: float = 0.5,
    min_iou: float = 0.9,
    score_tol: float = 0.05,
    threads: int = 1,
) -> Parity:
    """The same check between two of the interpreter's own kernel sets: how far TF Lite agrees with itself."""
    ref_it = interpreter(tflite_path, kernels=reference, threads=threads)
    other_it = interpreter(tflite_path, kernels=other, threads=threads)
    size = input_size(ref_it)
    result = Parity()
    for path in images:
        pixels = load_pixels(path, size)
        match_detections(interpreter_detections(ref_it, pixels), interpreter_detections(other_it, pixels), result,
                         Path(path).name, min_score=min_score, min_iou=min_iou, score_tol=score_tol)
    return result
