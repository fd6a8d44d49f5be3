"""`mobilenet predict`: top-k labels and probabilities for images, folders (recursively) or globs, and pictures.

Examples::

    mobilenet predict photo.jpg --weights runs/digits/best.safetensors     # pictures in runs/classify/predict
    mobilenet predict photos/ 'more/*.png' --weights w.safetensors --topk 3 --format csv --no-save
    mobilenet predict photos/ --weights w.safetensors --out labelled/       # pictures and predictions.json there

Imported ImageNet weights carry human-readable names beside the class ids; they are printed too
(text: ``n01440764 (tench) 91.2%``; json: a ``name`` key; csv: a ``name`` column). Each image is also written
with its top-k caption, under its relative name in its own format, with predictions.json beside them: to --out,
else to a new runs/classify/predict, predict2 ... folder (``$MOBILENET_RUNS`` moves runs/); --no-save prints only.
An image that cannot be read (truncated, not an image, a decompression bomb) is listed with its reason and left
out; when no image can be read the command fails with one line (exit 2).
"""

from __future__ import annotations

import argparse
import csv
import sys

from .flags import CLIError, add_threads_flag, positive_int
from .paths import add_picture_flags, check_picture_flags

NAME = "predict"
HELP = "top-k labels and probabilities for image files, folders (recursively) or globs; pictures with captions"
DESCRIPTION = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="IMAGE|DIR|GLOB", help="image files, folders or glob patterns")
    p.add_argument("--weights", required=True,
                   help="weights file (.safetensors written by mobilenet), or a deployed file run in its own runtime "
                        "(.onnx, .tflite, .pte, OpenVINO .xml, TorchScript .pt, .pt2)")
    p.add_argument("--topk", type=positive_int, default=5, help="labels per image (default: 5)")
    p.add_argument("--format", choices=("text", "json", "csv"), default="text", help="output format (default: text)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default: 32)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    add_picture_flags(p, "classify", "predictions.json")
    add_threads_flag(p)


def _csv(results: list[dict], errors: list[dict]) -> None:
    w = csv.writer(sys.stdout, lineterminator="\n")
    named = any("name" in t for r in results for t in r.get("top", []))
    failed = [""] if errors else []  # an "error" column only when an image was left out
    w.writerow(["path", "rank", "label", "index", "prob"] + (["name"] if named else []) + (["error"] if errors else []))
    for r in results:
        if "error" in r:
            w.writerow([r["path"], "", "", "", ""] + ([""] if named else []) + [r["error"]])
        for rank, t in enumerate(r.get("top", []), 1):
            w.writerow([r["path"], rank, t["label"], t["index"], f"{t['prob']:.6f}"]
                       + ([t.get("name", "")] if named else []) + failed)


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import predict as lib
    from ..distributed import resolve_device
    from ..runtimes import is_artifact, open_model
    from ..strict_json import dumps

    paths = lib.expand_inputs(args.inputs)
    check_picture_flags(args, paths)
    device = torch.device("cpu") if is_artifact(args.weights) and args.device == "auto" else resolve_device(args.device)
    model = open_model(args.weights, device=device, threads=torch.get_num_threads())
    lib.require_classifier(model, str(args.weights))
    results = lib.predict(model, paths, topk=args.topk, batch_size=args.batch_size, device=device)
    errors = [r for r in results if "error" in r]
    if len(errors) == len(results):
        first = errors[0]
        more = f" (and the other {len(errors) - 1} image(s) too)" if len(errors) > 1 else ""
        raise CLIError(f"{first['path']}: {first['error']}{more}")
    if args.format == "json":
        print(dumps(results, indent=2))
    elif args.format == "csv":
        _csv(results, errors)
    else:
        for r in results:
            print(f"{r['path']}: {r['error'] if 'error' in r else ', '.join(lib.topk_caption(r['top']))}")
    if errors:
        print(f"mobilenet predict: {len(errors)} of {len(results)} image(s) could not be read and were left out",
              file=sys.stderr)
    if not args.no_save:
        folder = args.out or lib.new_run_folder("classify")
        pictures = lib.write_pictures(results, folder, lib.draw_topk)
        print(f"mobilenet predict: wrote {len(pictures)} picture(s) and predictions.json to {folder}",
              file=sys.stderr)
    return 0
