"""Imported COCO SSD vs the TF Lite interpreter on every real photo under ../shared/data.

For each detection the interpreter reports with score >= 0.5, look for ours with the same label,
IoU >= 0.9 and |score difference| <= 0.05; print the match rate per folder and the misses.

    python benchmarks/detect_tflite_parity.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mobilenet.detection.boxes import box_iou  # noqa: E402
from mobilenet.detection.tflite_import import import_detect_tflite  # noqa: E402

DATA = Path(os.environ.get("MOBILENET_DATA", REPO.parent / "shared" / "data"))
FOLDERS = {"imagenet": "imagenet/images", "voc": "detection/voc/VOCdevkit", "kitti": "detection/kitti/training/image_2"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    args = ap.parse_args()
    from ai_edge_litert.interpreter import Interpreter

    src = DATA / "weights" / "tflite" / "detect.tflite"
    model = import_detect_tflite(src)
    it = Interpreter(model_path=str(src))
    it.allocate_tensors()
    inp, outs = it.get_input_details()[0], it.get_output_details()
    summary, misses = {}, []
    for name, folder in FOLDERS.items():
        files = sorted(p for p in (DATA / folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        refs = ok = 0
        for path in files:
            pixels = np.asarray(Image.open(path).convert("RGB").resize((300, 300), Image.BILINEAR))
            it.set_tensor(inp["index"], pixels[None])
            it.invoke()
            boxes, classes, scores, count = (it.get_tensor(d["index"])[0] for d in outs)
            x = (torch.from_numpy(pixels.copy()).permute(2, 0, 1).float()[None] - 128) / 128
            ours = model.detect(x)[0]
            for i in range(int(count)):
                if scores[i] < 0.5:
                    continue
                refs += 1
                ref = torch.tensor(boxes[i][[1, 0, 3, 2]])[None]  # TF: ymin, xmin, ymax, xmax
                iou = box_iou(ref, ours.boxes)[0] * (ours.labels == int(classes[i]))
                j = int(iou.argmax())
                if iou[j] >= 0.9 and abs(float(ours.scores[j]) - float(scores[i])) <= 0.05:
                    ok += 1
                else:
                    misses.append({"image": path.name, "class": int(classes[i]), "tflite_score": float(scores[i]),
                                   "best_iou": round(float(iou[j]), 3), "our_score": round(float(ours.scores[j]), 3)})
        summary[name] = {"photos": len(files), "reference_detections": refs, "matched": ok,
                         "rate": round(ok / refs, 4) if refs else None}
    total_refs = sum(s["reference_detections"] for s in summary.values())
    total_ok = sum(s["matched"] for s in summary.values())
    result = {"per_folder": summary, "total": {"reference_detections": total_refs, "matched": total_ok,
                                               "rate": round(total_ok / total_refs, 4)}, "misses": misses}
    print(json.dumps(result, indent=1))
    print("\n| photos | TF Lite detections >= 0.5 | matched (label, IoU >= 0.9, score +-0.05) |\n|---|---|---|")
    for name, s in summary.items():
        print(f"| {name} ({s['photos']}) | {s['reference_detections']} | {s['matched']} ({s['rate']:.1%}) |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
