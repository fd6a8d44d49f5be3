"""`mobilenet detect`: MobileNet-SSD object detection (train, eval, predict, convert, export).

Examples::

    mobilenet detect predict photo.jpg --weights detect.tflite --out out/        # TF Lite COCO SSD, imported
    mobilenet detect convert detect.tflite --out coco_ssd.safetensors
    mobilenet detect train --data VOCdevkit --weights coco_ssd.safetensors --epochs 50 --out runs/voc
    mobilenet detect train --config configs/ssd_kitti.toml --data kitti/training --out runs/kitti   # a recipe
    mobilenet detect eval --weights runs/voc/best.safetensors --data VOCdevkit --split test
    mobilenet detect eval --predictions out/detections.json --data VOCdevkit --split test
    mobilenet detect export --weights runs/voc/best.safetensors --out ssd.onnx [--nms per-class|class-agnostic|none]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from . import detect_video

NAME = "detect"
HELP = "object detection with MobileNet-SSD: train, eval, predict, convert, export"
DESCRIPTION = __doc__
WEIGHTS = ("detector weights (.safetensors; a detection .tflite, imported; or a deployed file run in its own runtime: "
           ".onnx, .pte, OpenVINO .xml, our .tflite exports)")
RUNTIME = "run --weights in this runtime (tflite: Google's detect.tflite in the interpreter instead of imported)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..recipe import DetectConfig, add_config_flags

    sub = p.add_subparsers(dest="detect_command", metavar="SUBCOMMAND")
    sub.required = True
    t = sub.add_parser("train", help="train or fine-tune an SSD",
                       description="Train or fine-tune an SSD. Settings: defaults, then a TOML recipe (--config, e.g. "
                       "configs/ssd_voc.toml, whose keys are these flags' names; --loss is `classification`), then "
                       "the flags given. --print-config shows every value.")
    t.add_argument("--config", metavar="TOML", help="recipe file (configs/ssd_*.toml); flags override its keys")
    t.add_argument("--print-config", action="store_true", help="print the resolved settings as JSON and exit")
    t.add_argument("--quiet", action="store_true", help="no progress bar, only one line per epoch")
    add_config_flags(t, DetectConfig, flags={"classification": "--loss"})

    e = sub.add_parser("eval", help="mAP of a detector (or of saved predictions) on a dataset",
                       description="mAP table and JSON for a detector, or for a JSON written by `detect predict`.")
    e.add_argument("--data", required=True, help="dataset root: VOC folder (VOCdevkit or VOC2007), KITTI training/ "
                   "folder, or COCO annotation JSON")
    e.add_argument("--data-format", choices=("voc", "kitti", "coco"), default="voc")
    e.add_argument("--split", default="test", help="VOC ImageSets/Main list name; KITTI all|train|val")
    e.add_argument("--classes", help="comma-separated class names (default: the format's standard classes)")
    e.add_argument("--image-dir", help="COCO: folder of the images (default: beside the JSON)")
    e.add_argument("--val-fraction", type=float, default=0.2, help="KITTI seeded split: fraction held out")
    e.add_argument("--seed", type=int, default=0)
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help=WEIGHTS)
    src.add_argument("--predictions", help="detections JSON from `detect predict --format json` / detections.json")
    e.add_argument("--metric", choices=("voc", "voc07", "kitti", "coco"))
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--device", default="auto")
    e.add_argument("--runtime", choices=("tflite", "openvino"), help=RUNTIME)
    e.add_argument("--json", dest="json_out", help="also write the metrics here")

    pr = sub.add_parser("predict", help="detections for images (JSON) and pictures with boxes",
                        description="Detect objects in images; print JSON or a table; --out writes pictures.")
    pr.add_argument("inputs", nargs="+", metavar="IMAGE|DIR")
    pr.add_argument("--weights", required=True, help=WEIGHTS)
    pr.add_argument("--out", help="folder for <image>.jpg with boxes drawn and detections.json")
    pr.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    pr.add_argument("--score-threshold", type=float, default=0.3)
    pr.add_argument("--batch-size", type=int, default=8)
    pr.add_argument("--device", default="auto")
    pr.add_argument("--runtime", choices=("tflite", "openvino"), help=RUNTIME)

    c = sub.add_parser("convert", help="import TF Lite's detect.tflite (COCO SSD) into a weights file",
                       description="Import a TF Object Detection API SSD-MobileNet v1 .tflite export.")
    c.add_argument("src", help="detect.tflite")
    c.add_argument("--labelmap", help="labelmap.txt (default: beside the .tflite)")
    c.add_argument("--out", required=True, help="output .safetensors")

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
    x.add_argument("--calib-count", type=int, default=64, help="at most this many calibration images (default 64)")
    x.add_argument("--score-threshold", type=float)
    x.add_argument("--iou-threshold", type=float)
    x.add_argument("--pre-nms-top-k", type=int, help="candidates kept before NMS (per class in per-class mode)")
    x.add_argument("--max-detections", type=int, help="detections per image")
    detect_video.add_parser(sub)  # `detect video` lives in cli/detect_video.py


def _print_metrics(r: dict[str, Any]) -> None:
    if r["metric"] == "kitti":
        print(f"{'class':<14}{'easy':>8}{'moderate':>10}{'hard':>8}   (AP R40, %)")
        for cls, v in r["per_class"].items():
            print(f"{cls:<14}" + "".join(f"{v[d]['ap_r40']:>{w}.2f}" for d, w in
                                         (("easy", 8), ("moderate", 10), ("hard", 8))))
    elif "per_class" in r:
        print(f"{'class':<16}{'AP':>8}{'#gt':>6}")
        for cls, ap in r["per_class"].items():
            print(f"{cls:<16}{'-' if math.isnan(ap) else f'{ap:.4f}':>8}{r['num_gt'][cls]:>6}")
    print(f"{r['metric']} mAP: {r['map']:.4f}")


def _train(args: argparse.Namespace) -> int:
    from ..distributed import barrier, setup, teardown
    from ..engine.detect import train_detector
    from ..recipe import DetectConfig, overrides_from_args, resolve
    from ._progress import follow

    cfg = resolve(args.config, overrides_from_args(args, DetectConfig), DetectConfig, defaults={"workers": 2})
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    for key in ("data", "out"):
        if getattr(cfg, key) is None:
            raise ValueError(f"--{key} is required (or {key} = ... in the --config recipe)")
    info = setup(cfg.device)
    try:
        code = follow(train_detector(cfg, info=info), show=info.is_main, quiet=args.quiet, out=str(cfg.out))
        barrier()
    finally:
        teardown()
    return code


def _device(args: argparse.Namespace) -> Any:
    """The device to run on: ``--device``, where ``auto`` is the CPU for a file another runtime runs (every
    deployed file but Google's detect.tflite, which is imported unless ``--runtime`` says otherwise)."""
    import torch

    from ..distributed import resolve_device
    from ..runtimes import is_artifact
    from ..runtimes.tflite import read_metadata

    weights = str(args.weights)
    imported = weights.lower().endswith(".tflite") and not args.runtime and not read_metadata(weights)[0]
    if args.device == "auto" and is_artifact(weights) and not imported:
        return torch.device("cpu")
    return resolve_device(args.device)


def _eval(args: argparse.Namespace) -> int:
    import torch

    from ..detection.evaluate import evaluate_detector, score_predictions
    from ..engine.detect import load_detector, read_split
    from ..recipe import DetectConfig
    from ..runtimes import describe
    from ._progress import print_problems

    cfg = DetectConfig(data=args.data, data_format=args.data_format, classes=args.classes, image_dir=args.image_dir,
                       val_fraction=args.val_fraction, seed=args.seed, metric=args.metric)
    ds = read_split(cfg, args.split)
    print_problems({args.split: ds.problems}, args.data)
    if args.predictions:
        r = score_predictions(args.predictions, ds, cfg.metric)  # type: ignore[arg-type]
    else:
        device = _device(args)
        model = load_detector(args.weights, device, runtime=args.runtime, threads=torch.get_num_threads())
        r = evaluate_detector(model, ds, metric=cfg.metric,  # type: ignore[arg-type]
                              batch_size=args.batch_size, device=device, progress=True)
        r["runtime"] = describe(model)
    _print_metrics(r)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(r, indent=1))
    return 0


def _predict(args: argparse.Namespace) -> int:
    import torch

    from ..detection.predict import detect_images, list_images, write_outputs
    from ..engine.detect import load_detector

    paths, device = list_images(args.inputs), _device(args)  # a missing image before a model load
    model = load_detector(args.weights, device, runtime=args.runtime, threads=torch.get_num_threads())
    results = detect_images(model, paths, score_threshold=args.score_threshold, batch_size=args.batch_size,
                            device=device)
    if args.out:
        pictures = write_outputs(results, args.out)
        print(f"wrote {len(pictures)} picture(s) and detections.json to {args.out}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps(results, indent=1))
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


def _convert(args: argparse.Namespace) -> int:
    from ..checkpoint import save
    from ..tflite.ssd import import_detect_tflite

    model = import_detect_tflite(args.src, args.labelmap)
    path = save(model, args.out, info=model.weights_info)
    print(f"wrote {path} (ssd_mobilenet_v1, width {model.config.width_mult}, {model.config.num_classes} classes)")
    return 0


def _export(args: argparse.Namespace) -> int:
    from ..detection.export import export_detector_int8, export_detector_onnx
    from ..detection.predict import class_names_of, load_inputs
    from ..engine.detect import load_detector

    if bool(args.int8) != bool(args.calib):
        raise ValueError("--int8 needs --calib IMAGE|DIR (calibration images), and --calib is only for --int8")
    nms = args.nms != "none"
    model = load_detector(args.weights)
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


def run(args: argparse.Namespace) -> int:
    if args.detect_command == "video":
        return detect_video.run(args)
    return {"train": _train, "eval": _eval, "predict": _predict, "convert": _convert,
            "export": _export}[args.detect_command](args)
