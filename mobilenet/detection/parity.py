"""Our imported COCO SSD against the TF Lite interpreter on the same pixels (the parity check of issue 6).

A reference detection (score >= ``min_score``) is matched when ours has the same label, IoU >= ``min_iou``
and a score within ``score_tol``. Used by ``tests/test_det_tflite.py`` and
``benchmarks/detect_tflite_parity.py``; needs ``ai-edge-litert`` for the interpreter.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .boxes import box_iou
from .ssd import SSD


@dataclass
class Parity:
    references: int = 0
    matched: int = 0
    misses: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rate(self) -> float | None:
        return self.matched / self.references if self.references else None


def tflite_parity(
    model: SSD,
    tflite_path: str | os.PathLike[str],
    images: Iterable[Path],
    *,
    min_score: float = 0.5,
    min_iou: float = 0.9,
    score_tol: float = 0.05,
    threads: int = 1,
) -> Parity:
    """Run the interpreter and ``model`` on each image resized to the model's input (bilinear, uint8)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(tflite_path), num_threads=threads)
    it.allocate_tensors()
    inp, outs = it.get_input_details()[0], it.get_output_details()
    height, width = (int(v) for v in inp["shape"][1:3])
    result = Parity()
    for path in images:
        pixels = np.asarray(Image.open(path).convert("RGB").resize((width, height), Image.BILINEAR))
        it.set_tensor(inp["index"], pixels[None])
        it.invoke()
        boxes, classes, scores, count = (it.get_tensor(d["index"])[0] for d in outs)
        x = (torch.from_numpy(pixels.copy()).permute(2, 0, 1).float()[None] - 128) / 128  # the file's uint8 input
        with torch.inference_mode():
            ours = model.detect(x)[0]
        for i in range(int(count)):
            if scores[i] < min_score:
                continue
            result.references += 1
            ref = torch.tensor(boxes[i][[1, 0, 3, 2]])[None]  # TF: ymin, xmin, ymax, xmax
            iou = box_iou(ref, ours.boxes)[0] * (ours.labels == int(classes[i]))
            j = int(iou.argmax()) if iou.numel() else -1
            if j >= 0 and iou[j] >= min_iou and abs(float(ours.scores[j]) - float(scores[i])) <= score_tol:
                result.matched += 1
            else:
                result.misses.append({
                    "image": Path(path).name, "class": int(classes[i]), "tflite_score": round(float(scores[i]), 3),
                    "best_iou": round(float(iou[j]), 3) if j >= 0 else 0.0,
                    "our_score": round(float(ours.scores[j]), 3) if j >= 0 else None})
    return result
