"""Imported weights vs their source runtime on the shared ImageNet photos (100 photos, one per class).

For every real file under ../shared/data/weights (or $MOBILENET_DATA/weights):
* TF Lite classifiers: the TF Lite interpreter (ai-edge-litert) vs our float model running the
  dequantized weights; top-1/top-5 of both against the photo's WordNet id, top-1 agreement. As a
  diagnostic, also ours with every activation rounded to the file's uint8 grid (``uint8_activations``:
  what the interpreter computes in), which isolates activation quantization as the source of disagreement.
* Keras no-top files: Keras' own MobileNet (torch backend) vs ours, max |difference| of the features.

Prints a markdown table (for the README) and JSON. Usage:
    python benchmarks/import_parity.py [--data ../shared/data] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mobilenet.convert import import_model  # noqa: E402
from mobilenet.convert.parity import compare, keras_outputs, labelled_photos, photo_pixels, torch_logits  # noqa: E402
from mobilenet.tflite.fidelity import uint8_activations  # noqa: E402
from mobilenet.tflite.parity import tflite_outputs  # noqa: E402


def tflite_rows(path: Path, photos: list) -> dict:
    model = import_model(path)
    pre = model.weights_info.preprocessing
    pixels = photo_pixels([p for p, _ in photos], pre)
    labels = [y for _, y in photos]
    t0 = time.perf_counter()
    ref = tflite_outputs(path, pixels)
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = torch_logits(model, pixels, pre)
    t_ours = time.perf_counter() - t0
    plain = compare(ref, ours, labels)
    with uint8_activations(model):  # the file's recorded uint8 grids, as the interpreter computes
        sim = compare(ref, torch_logits(model, pixels, pre), labels)
    return {"file": path.name, "format": "tflite", "photos": plain.n,
            "reference": "TF Lite interpreter (ai-edge-litert)",
            "ref_top1": plain.ref_top1, "ref_top5": plain.ref_top5,
            "ours_top1": plain.ours_top1, "ours_top5": plain.ours_top5, "top1_agreement": plain.top1_agreement,
            "ours_uint8_act_top1": sim.ours_top1, "ours_uint8_act_agreement": sim.top1_agreement,
            "ref_seconds": round(t_ref, 3), "ours_seconds": round(t_ours, 3)}


def keras_rows(path: Path, photos: list) -> dict:
    from PIL import Image

    model = import_model(path)
    cfg = model.config
    pre = model.weights_info.preprocessing
    x = torch.stack([pre(Image.open(p)) for p, _ in photos])
    ref = keras_outputs(path, model, x)

    def run(m: torch.nn.Module, inputs: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return (m(inputs) if cfg.num_classes else m.forward_features(inputs).permute(0, 2, 3, 1)).numpy()

    ours = run(model, x)
    # the same comparison with both sides computed in float64: what is left is the mapping, not rounding
    exact = run(import_model(path).double(), x.double())
    ref64 = keras_outputs(path, model, x, float64=True)
    diff = np.abs(ref - ours)
    # what a classifier on top sees: globally pooled features (B, C)
    pooled = np.abs(ref.mean((1, 2)) - ours.mean((1, 2))).max() if not cfg.num_classes else float(diff.max())
    import keras

    return {"file": path.name, "format": "keras", "photos": len(photos),
            "reference": f"keras {keras.__version__} ({keras.backend.backend()} backend)",
            "output": "logits" if cfg.num_classes else "features (no top)",
            "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "p99_abs_diff": float(np.quantile(diff, 0.99)), "pooled_max_abs_diff": float(pooled),
            "output_abs_max": float(np.abs(ref).max()),
            "float64_max_abs_diff": float(np.abs(ref64 - exact).max()),
            "keras_fp32_vs_fp64_max_abs_diff": float(np.abs(ref - ref64).max()),
            "ours_fp32_vs_fp64_max_abs_diff": float(np.abs(ours - exact).max())}


def markdown(rows: list[dict]) -> str:
    lines = ["| file | reference | photos | ref top-1 | ours top-1 | ref top-5 | ours top-5 | top-1 agreement "
             "| max abs diff |", "|---|---|---|---|---|---|---|---|---|"]
    pct = lambda v: f"{100 * v:.0f}%"  # noqa: E731
    for r in rows:
        if r["format"] == "tflite":
            lines.append(f"| {r['file']} | {r['reference']} | {r['photos']} | {pct(r['ref_top1'])} | "
                         f"{pct(r['ours_top1'])} | {pct(r['ref_top5'])} | {pct(r['ours_top5'])} | "
                         f"{pct(r['top1_agreement'])} (uint8-activation sim: {pct(r['ours_uint8_act_agreement'])}) "
                         f"| - |")
        else:
            lines.append(f"| {r['file']} | {r['reference']} | {r['photos']} | - | - | - | - | - | "
                         f"{r['max_abs_diff']:.1e} on {r['output']} (max {r['output_abs_max']:.1f}); "
                         f"mean {r['mean_abs_diff']:.1e}; pooled {r['pooled_max_abs_diff']:.1e}; "
                         f"both in float64 {r['float64_max_abs_diff']:.1e}; float32 vs float64: "
                         f"Keras {r['keras_fp32_vs_fp64_max_abs_diff']:.1e}, "
                         f"ours {r['ours_fp32_vs_fp64_max_abs_diff']:.1e} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("MOBILENET_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--json", help="also write the JSON here")
    args = ap.parse_args()
    data = Path(args.data)
    photos = labelled_photos(data / "imagenet" / "images")
    rows = []
    for path in sorted((data / "weights" / "tflite").glob("*.tflite")):
        if path.name == "detect.tflite":
            continue  # the SSD detector is imported by mobilenet.detection
        rows.append(tflite_rows(path, photos))
    for path in sorted((data / "weights" / "keras").glob("*.h5")):
        rows.append(keras_rows(path, photos))
    env = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine()}
    print(markdown(rows))
    result = {"env": env, "rows": rows}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
