"""`mobilenet predict`: top-k labels and probabilities for images, a folder or a glob.

Examples::

    mobilenet predict photo.jpg --weights runs/digits/best.safetensors
    mobilenet predict 'images/*.png' --weights w.safetensors --topk 3 --format csv

Imported ImageNet weights carry human-readable names beside the class ids; they are printed too
(text: ``n01440764 (tench) 91.2%``; json: a ``name`` key; csv: a ``name`` column).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys

NAME = "predict"
HELP = "top-k labels and probabilities for image files, folders or globs"
DESCRIPTION = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="IMAGE|DIR|GLOB", help="image files, folders or glob patterns")
    p.add_argument("--weights", required=True, help="weights file (.safetensors written by mobilenet)")
    p.add_argument("--topk", type=int, default=5, help="labels per image")
    p.add_argument("--format", choices=("text", "json", "csv"), default="text", help="output format")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")


def _shown(top: dict) -> str:
    """``n01440764 (tench)``: the id and the first of its readable synonyms, or the id alone."""
    if "name" not in top:
        return str(top["label"])
    return f"{top['label']} ({top['name'].split(',')[0].strip()})"


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load
    from ..distributed import resolve_device
    from ..predict import expand_inputs, predict

    if args.topk < 1:
        raise ValueError(f"--topk must be >= 1, got {args.topk}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    paths = expand_inputs(args.inputs)
    device = resolve_device(args.device)
    model = load(args.weights, map_location=device)
    results = predict(model, paths, topk=args.topk, batch_size=args.batch_size, device=device)
    if args.format == "json":
        print(json.dumps(results, indent=2))
    elif args.format == "csv":
        w = csv.writer(sys.stdout, lineterminator="\n")
        named = any("name" in t for r in results for t in r.get("top", []))
        w.writerow(["path", "rank", "label", "index", "prob"] + (["name"] if named else []))
        for r in results:
            if "error" in r:
                w.writerow([r["path"], "", "", "", ""] + ([""] if named else []))
            for rank, t in enumerate(r.get("top", []), 1):
                w.writerow([r["path"], rank, t["label"], t["index"], f"{t['prob']:.6f}"]
                           + ([t.get("name", "")] if named else []))
    else:
        for r in results:
            if "error" in r:
                print(f"{r['path']}: {r['error']}")
                continue
            tops = ", ".join(f"{_shown(t)} {100 * t['prob']:.1f}%" for t in r["top"])
            print(f"{r['path']}: {tops}")
    errors = sum("error" in r for r in results)
    if errors:
        print(f"mobilenet predict: {errors} of {len(results)} image(s) could not be read", file=sys.stderr)
    return 1 if errors == len(results) else 0
