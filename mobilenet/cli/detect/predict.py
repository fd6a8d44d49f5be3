"""`mobilenet detect predict`: detections for images, as a table or JSON, and pictures with the boxes drawn (to
--out, else to a new runs/detect/predict, predict2 ... folder; --no-save prints only)."""

from __future__ import annotations

import argparse
import sys

from ... import strict_json
from ..flags import CLIError, add_threads_flag, positive_int, probability
from ..paths import add_picture_flags, check_picture_flags
from .weights import WEIGHTS, add_runtime_flags


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    pr = sub.add_parser("predict", help="detections for images (JSON) and pictures with boxes",
                        description="Detect objects in images, folders (recursively) or globs; print a table or JSON. "
                        "Each image is written with its boxes drawn, under its relative name in its own format, with "
                        "detections.json beside them: to --out, else to a new runs/detect/predict, predict2 ... folder "
                        "($MOBILENET_RUNS moves runs/); --no-save prints only.")
    pr.add_argument("inputs", nargs="+", metavar="IMAGE|DIR|GLOB")
    pr.add_argument("--weights", required=True, help=WEIGHTS)
    add_picture_flags(pr, "detect", "detections.json")
    pr.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")
    pr.add_argument("--score-threshold", type=probability, default=0.3,
                    help="keep detections scoring at least this, in [0, 1] (default: 0.3)")
    pr.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass (default: 8)")
    add_threads_flag(pr)
    add_runtime_flags(pr)
    return pr


def run(args: argparse.Namespace) -> int:
    from ...detection.predict import detect_images, list_images, write_outputs
    from ...predict import new_run_folder
    from .weights import load

    paths = list_images(args.inputs)  # a missing image before a model load
    check_picture_flags(args, paths)
    model, device = load(args)
    results = detect_images(model, paths, score_threshold=args.score_threshold, batch_size=args.batch_size,
                            device=device)
    errors = [r for r in results if "error" in r]
    if errors and len(errors) == len(results):
        more = f" (and the other {len(errors) - 1} image(s) too)" if len(errors) > 1 else ""
        raise CLIError(f"{errors[0]['image']}: {errors[0]['error']}{more}")
    if not args.no_save:
        folder = args.out or new_run_folder("detect")
        pictures = write_outputs(results, folder)
        print(f"mobilenet detect predict: wrote {len(pictures)} picture(s) and detections.json to {folder}",
              file=sys.stderr)
    if args.format == "json":
        print(strict_json.dumps(results, indent=1))
        return 0
    for r in results:
        if "error" in r:  # an unreadable image: reported, never replaced by another
            print(f"{r['image']}: {r['error']}")
            continue
        print(f"{r['image']}: {len(r['detections'])} detection(s)")
        for d in r["detections"]:
            x1, y1, x2, y2 = d["box"]
            print(f"  {d['label']:<16}{d['score']:.3f}  [{x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}]")
    return 0
