"""The model behind `mobilenet serve`: a classifier or a detector, PyTorch or exported, run on batches of images.

``load_served(path)`` reads a weights file: ``.safetensors`` (our classifier or SSD), ``.tflite`` (TF Lite's
``detect.tflite``, or a MobileNet v1 classifier, imported into PyTorch); other exported classifiers (``.onnx``,
OpenVINO ``.xml``, ExecuTorch ``.pte``) run in their own runtime through ``mobilenet.runtimes``; an exported
detector is an ONNX file from ``mobilenet detect export`` (with NMS). ``run(images)`` is one forward pass over a
batch of PIL images; ``format(raw, ...)`` turns one image's raw output into the JSON the API answers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .. import strict_json
from ..detection.boxes import clip_boxes
from ..detection.postprocess import Detections
from ..inference import probabilities


class ServedModel:
    """One loaded model and what ``GET /model`` says about it."""

    def __init__(self, kind: str, info: dict[str, Any], run: Any, class_names: list[str],
                 readable: list[str] | None = None) -> None:
        self.kind = kind  # "classifier" or "detector"
        self.info = {"kind": kind, **info, "class_names": class_names}
        self.class_names = class_names
        self.readable = readable
        self._run = run

    def run(self, images: list[Image.Image]) -> list[Any]:
        """One forward pass over ``images`` (RGB PIL): class probabilities (C,) per image for a classifier,
        pixel ``Detections`` per image for a detector."""
        with torch.inference_mode():
            return self._run(images)

    def format(self, raw: Any, *, topk: int = 5, score_threshold: float = 0.5) -> dict[str, Any]:
        """One image's raw output -> ``{"top": [{"label", "index", "prob", "name"?}]}`` or
        ``{"detections": [{"box", "score", "label", "class_id"}], "width", "height"}``."""
        if self.kind == "classifier":
            k = min(topk, raw.shape[0])
            p, idx = raw.topk(k)
            top = []
            for q, i in zip(p.tolist(), idx.tolist(), strict=True):
                entry = {"label": self.class_names[i], "index": i, "prob": round(q, 6)}
                if self.readable is not None:
                    entry["name"] = self.readable[i]
                top.append(entry)
            return {"top": top}
        d, (w, h) = raw
        keep = d.scores >= score_threshold
        boxes = clip_boxes(d.boxes[keep], w, h)
        order = d.scores[keep].argsort(descending=True).tolist()
        b, s, c = boxes.tolist(), d.scores[keep].tolist(), d.labels[keep].tolist()
        return {"width": w, "height": h, "detections": [
            {"box": [round(v, 1) for v in b[i]], "score": round(s[i], 4), "label": self.class_names[c[i]],
             "class_id": c[i]} for i in order]}


def load_served(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> ServedModel:
    """A :class:`ServedModel` for a classifier or detector file (see the module doc)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    device = torch.device(device)
    suffix = path.suffix.lower()
    if suffix == ".tflite":
        from ..tflite.format import read_tflite
        from ..tflite.ssd import POSTPROCESS_OP

        if any(op.custom_code == POSTPROCESS_OP for op in read_tflite(path).operators):
            return _detector(path, device)  # TF Lite's SSD, imported into PyTorch
        from ..convert import import_model

        return _torch_classifier(import_model(path), path.name, device)
    if suffix == ".safetensors":
        from .. import detection  # noqa: F401  (registers the SSD builder)
        from ..checkpoint import load, read_metadata

        if read_metadata(path).get("architecture") == "ssd_mobilenet_v1":
            return _detector(path, device)
        return _torch_classifier(load(path), path.name, device)
    from .. import runtimes

    predictor = runtimes.load(path)  # .onnx, .xml, .pte, ...: the file's own runtime
    if predictor.task == "detect":
        if suffix != ".onnx":
            raise ValueError(f"{path.name}: detectors are served from .safetensors, detect.tflite or an ONNX export "
                             f"with NMS, not from {suffix}")
        return _detector(path, device)
    return _artifact_classifier(predictor)


def _torch_classifier(model: Any, name: str, device: torch.device) -> ServedModel:
    from ..predict import _label_names, _readable_names, check_finite, model_preprocessing, require_classifier

    require_classifier(model, name)
    model = model.eval().to(device)
    pre = model_preprocessing(model)
    n = model.num_classes

    def run(images: list[Image.Image]) -> list[torch.Tensor]:
        logits = model(torch.stack([pre(im) for im in images]).to(device)).float()
        check_finite(logits, name)
        return list(logits.softmax(1).cpu())

    info = {"file": name, "runtime": "pytorch", "device": str(device), "config": model.config.to_dict(),
            "preprocessing": pre.to_dict()}
    return ServedModel("classifier", info, run, _label_names(model, n), _readable_names(model, n))


def _artifact_classifier(predictor: Any) -> ServedModel:
    """An exported classifier in its runtime (``mobilenet.runtimes``): the file's preprocessing and class names."""
    pre = predictor.preprocessing
    names = predictor.class_names

    def run(images: list[Image.Image]) -> list[torch.Tensor]:
        logits = predictor(torch.stack([pre(im) for im in images]))
        return list(probabilities(logits[0] if isinstance(logits, tuple) else logits, predictor))

    info = {"file": predictor.path.name, "runtime": predictor.runtime, "device": "cpu",
            "config": predictor.metadata.get("config"), "preprocessing": pre.to_dict()}
    if names is None:  # a file without our metadata: indices as labels
        names = [str(i) for i in range(int(run([Image.new("RGB", (pre.resolution, pre.resolution))])[0].shape[0]))]
    return ServedModel("classifier", info, run, list(names))


def _detector(path: Path, device: torch.device) -> ServedModel:
    from ..video.detector import frames_to_tensor, load_frame_detector, resize_pixels

    det = load_frame_detector(path, device)

    def run(images: list[Image.Image]) -> list[tuple[Detections, tuple[int, int]]]:
        pixels = torch.cat([resize_pixels(frames_to_tensor(np.asarray(im), device), det.input_size) for im in images])
        return [(d.scaled(*im.size), im.size) for d, im in zip(det.detect(pixels), images, strict=True)]

    info = {"file": path.name, "runtime": "onnxruntime" if path.suffix.lower() == ".onnx" else "pytorch",
            "device": str(device), "input_size": list(det.input_size)}
    return ServedModel("detector", info, run, det.class_names)


def describe(model: ServedModel) -> str:
    """One line: what is served."""
    return f"{model.kind} {model.info['file']} ({model.info['runtime']}, {len(model.class_names)} classes)"


def to_json(obj: Any) -> bytes:
    return strict_json.dumps(obj).encode()
