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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mobilenet.detection.parity import tflite_parity  # noqa: E402
from mobilenet.detection.tflite_import import import_detect_tflite  # noqa: E402

DATA = Path(os.environ.get("MOBILENET_DATA", REPO.parent / "shared" / "data"))
FOLDERS = {"imagenet": "imagenet/images", "voc": "detection/voc/VOCdevkit", "kitti": "detection/kitti/training/image_2"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    args = ap.parse_args()
    model = import_detect_tflite(DATA / "weights" / "tflite" / "detect.tflite")
    summary, misses = {}, []
    for name, folder in FOLDERS.items():
        files = sorted(p for p in (DATA / folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        parity = tflite_parity(model, DATA / "weights" / "tflite" / "detect.tflite", files, threads=2)
        misses += parity.misses
        summary[name] = {"photos": len(files), "reference_detections": parity.references, "matched": parity.matched,
                         "rate": round(parity.rate, 4) if parity.rate is not None else None}
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
