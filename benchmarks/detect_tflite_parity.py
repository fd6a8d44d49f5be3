"""Imported COCO SSD vs the TF Lite interpreter on every real photo under ../shared/data.

For each detection the interpreter reports with score >= 0.5, look for ours with the same label,
IoU >= 0.9 and |score difference| <= 0.05 (``mobilenet.tflite.parity.match_detections``). Rows:
ours in float, ours with the file's uint8 activation grids (``uint8_activations``, "fidelity",
rounding as the reference kernel set does),
and, as the peer, the interpreter's other kernel sets judged by the same rule: TF Lite agreeing
with itself. Columns: the reference kernel set (``default`` = XNNPACK, what ``Interpreter()``
runs; ``builtin`` = TF Lite's optimized kernels; ``reference`` = its reference kernels). A second
table compares, before NMS, the post-processing op's uint8 inputs (box encodings, class scores):
ours with fidelity vs each kernel set, value for value.

    python benchmarks/detect_tflite_parity.py [--kernels default builtin reference] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mobilenet.tflite.fidelity import uint8_activations  # noqa: E402
from mobilenet.tflite.parity import (  # noqa: E402
    KERNELS,
    Parity,
    file_input,
    input_size,
    interpreter,
    interpreter_detections,
    load_pixels,
    match_detections,
    uint8_tensor_parity,
)
from mobilenet.tflite.ssd import import_detect_tflite  # noqa: E402

DATA = Path(os.environ.get("MOBILENET_DATA", REPO.parent / "shared" / "data"))
FOLDERS = {"imagenet": "imagenet/images", "voc": "detection/voc/VOCdevkit", "kitti": "detection/kitti/training/image_2"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=KERNELS,
                    help="the interpreter kernel sets to use as references (default: all three)")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    path = DATA / "weights" / "tflite" / "detect.tflite"
    model = import_detect_tflite(path)
    its = {k: interpreter(path, kernels=k) for k in args.kernels}
    size = input_size(next(iter(its.values())))
    candidates = ["ours float", "ours fidelity"] + [f"tflite {k}" for k in args.kernels]
    # results[(reference kernels, candidate)][folder] -> Parity
    results: dict[tuple[str, str], dict[str, Parity]] = {}
    photos = {name: sorted(p for p in (DATA / folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
              for name, folder in FOLDERS.items()}
    for folder, files in photos.items():
        for file in tqdm(files, desc=folder):
            pixels = load_pixels(file, size)
            x = file_input(pixels)
            dets = {f"tflite {k}": interpreter_detections(it, pixels) for k, it in its.items()}
            with torch.inference_mode():
                dets["ours float"] = model.detect(x)[0]
            for k in args.kernels:  # fidelity: the requantization of the kernel set it is compared with
                with uint8_activations(model, kernels=k), torch.inference_mode():
                    dets[f"ours fidelity {k}"] = model.detect(x)[0]
            for ref in args.kernels:
                for cand in candidates:
                    if cand == f"tflite {ref}":
                        continue
                    parity = results.setdefault((ref, cand), {}).setdefault(folder, Parity())
                    ours = dets[f"ours fidelity {ref}"] if cand == "ours fidelity" else dets[cand]
                    match_detections(dets[f"tflite {ref}"], ours, parity, file.name)
    rows = []
    for (ref, cand), per_folder in results.items():
        refs = sum(p.references for p in per_folder.values())
        ok = sum(p.matched for p in per_folder.values())
        rows.append({"reference": f"tflite {ref}", "candidate": cand, "reference_detections": refs, "matched": ok,
                     "rate": round(ok / refs, 4) if refs else None,
                     "per_folder": {f: {"photos": len(photos[f]), "reference_detections": p.references,
                                        "matched": p.matched} for f, p in per_folder.items()},
                     "misses": [m for p in per_folder.values() for m in p.misses]})
    # before NMS: do the post-processing op's uint8 inputs (box encodings, scores) equal the interpreter's?
    tensors = {k: uint8_tensor_parity(model, path, [f for files in photos.values() for f in files], kernels=k)
               for k in args.kernels}
    env = {"python": platform.python_version(), "torch": torch.__version__, "threads": 1,
           "cpu": platform.processor() or platform.machine(), "photos": sum(len(f) for f in photos.values())}
    result = {"env": env, "rows": rows, "uint8_tensors": {f"tflite {k}": vars(t) for k, t in tensors.items()}}
    print(json.dumps(result, indent=1))
    print("\n| reference (TF Lite kernels) | candidate | TF Lite detections >= 0.5 | matched (label, IoU >= 0.9, "
          "score +-0.05) |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['reference']} | {r['candidate']} | {r['reference_detections']} "
              f"| {r['matched']} ({r['rate']:.1%}) |")
    print("\n| reference (TF Lite kernels) | photos | ours fidelity: box encodings and scores equal bit for bit "
          "| differing box values | differing score values |\n|---|---|---|---|---|")
    for k, t in tensors.items():
        print(f"| tflite {k} | {t.photos} | {t.equal_photos} | {t.box_values_differing} | {t.score_values_differing} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
