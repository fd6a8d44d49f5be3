"""`mobilenet detect export`: ONNX of a detector, ending in its own post-processing (or at boxes and scores)."""

from __future__ import annotations

import argparse
import sys

from ..flags import CLIError, positive_int, probability
from ..paths import check_output_file
from .weights import WEIGHTS


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    x = sub.add_parser("export", help="ONNX export of a detector, with or without NMS",
                       description="Export a detector to ONNX. Post-processing (score function, NMS mode, thresholds, "
                       "top-k, max detections) is the model's own unless a flag below changes it; the graph ends in "
                       "detections (N, 7): batch, x1, y1, x2, y2 (normalised), score, class; or, with --nms none, in "
                       "boxes (B, A, 4) and scores (B, A, C).")
    x.add_argument("--weights", required=True, help=WEIGHTS)
    x.add_argument("--out", required=True, help="output .onnx")
    x.add_argument("--nms", choices=("model", "per-class", "class-agnostic", "none"), default="model",
                   help="per-class NMS (SSD), class-agnostic (TF Lite: each anchor keeps its best class), none (end "
                   "at boxes and scores); default: the model's mode")
    x.add_argument("--int8", action="store_true", help="ONNX Runtime int8 (QDQ) convs, calibrated on --calib images; "
                   "decoding and NMS stay float")
    x.add_argument("--calib", metavar="IMAGE|DIR", nargs="+", help="calibration images for --int8")
    x.add_argument("--calib-count", type=positive_int, default=64,
                   help="at most this many calibration images (default 64)")
    x.add_argument("--score-threshold", type=probability, help="in [0, 1] (default: the model's)")
    x.add_argument("--iou-threshold", type=probability, help="in [0, 1] (default: the model's)")
    x.add_argument("--pre-nms-top-k", type=positive_int,
                   help="candidates kept before NMS (per class in per-class mode)")
    x.add_argument("--max-detections", type=positive_int, help="detections per image")
    return x


def run(args: argparse.Namespace) -> int:
    from ...detection.export import export_detector_int8, export_detector_onnx
    from ...detection.predict import class_names_of, load_inputs
    from ...detection.ssd import SSD
    from ...engine.detect import load_detector

    if bool(args.int8) != bool(args.calib):
        raise ValueError("--int8 needs --calib IMAGE|DIR (calibration images), and --calib is only for --int8")
    check_output_file(args.out, flag="--out", suffixes=(".onnx",), what="an ONNX detector",
                      inputs=[args.weights, *(args.calib or [])])
    nms = args.nms != "none"
    model = load_detector(args.weights)
    if not isinstance(model, SSD):  # an exported file runs in its runtime: there is no graph left to export
        raise CLIError(f"--weights {args.weights} is a deployed file, run in its runtime: export from the detector's "
                       "weights (.safetensors, or TF Lite's detect.tflite, imported)")
    mode = None if args.nms in ("model", "none") else args.nms.replace("-", "_")
    options = dict(nms=nms, nms_mode=mode, score_threshold=args.score_threshold, iou_threshold=args.iou_threshold,
                   pre_nms_top_k=args.pre_nms_top_k, max_detections=args.max_detections,
                   class_names=class_names_of(model))
    if args.int8:
        calib, skipped = load_inputs(model, args.calib, args.calib_count)
        for line in skipped:
            print(f"mobilenet detect export: calibration image left out: {line}", file=sys.stderr)
        path = export_detector_int8(model, args.out, calib, **options)
    else:
        path = export_detector_onnx(model, args.out, **options)
    pp = model.config.postprocess
    how = (f"{(mode or pp.nms_mode).replace('_', '-')} NMS" if nms else "without NMS") + f", {pp.score_fn} scores"
    print(f"wrote {path} ({how}{', int8 convs' if args.int8 else ''})")
    return 0
