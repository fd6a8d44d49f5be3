"""`mobilenet detect`: MobileNet-SSD object detection (train, eval, predict, convert, export).

Examples::

    mobilenet detect predict photo.jpg --weights detect.tflite --out out/        # TF Lite COCO SSD, imported
    mobilenet detect convert detect.tflite --out coco_ssd.safetensors
    mobilenet detect train --data VOCdevkit --format voc --weights coco_ssd.safetensors --epochs 50 --out runs/voc
    mobilenet detect eval --weights runs/voc/best.safetensors --data VOCdevkit --format voc --split test
    mobilenet detect eval --predictions out/detections.json --data VOCdevkit --format voc --split test
    mobilenet detect export --weights runs/voc/best.safetensors --out ssd.onnx [--nms per-class|class-agnostic|none]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

NAME = "detect"
HELP = "object detection with MobileNet-SSD: train, eval, predict, convert, export"
DESCRIPTION = __doc__


def _data_args(p: argparse.ArgumentParser, split: str) -> None:
    p.add_argument("--data", required=True, help="dataset root: VOC folder (VOCdevkit or VOC2007), KITTI training/ "
                   "folder, or COCO annotation JSON")
    p.add_argument("--format", dest="data_format", choices=("voc", "kitti", "coco"), default="voc")
    p.add_argument("--split", default=split, help="VOC ImageSets/Main list name; KITTI all|train|val")
    p.add_argument("--classes", help="comma-separated class names (default: the format's standard classes)")
    p.add_argument("--image-dir", help="COCO: folder of the images (default: beside the JSON)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="KITTI seeded split: fraction held out")
    p.add_argument("--seed", type=int, default=0)


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="detect_command", metavar="SUBCOMMAND")
    sub.required = True

    t = sub.add_parser("train", help="train or fine-tune an SSD", description="Train or fine-tune an SSD.")
    _data_args(t, "trainval")
    t.add_argument("--val-split", help="split to evaluate on during training (VOC: e.g. test; KITTI: val)")
    t.add_argument("--weights", help="start from this detector (e.g. the converted COCO SSD); class heads are "
                   "replaced when the class count differs")
    t.add_argument("--backbone-weights", help="MobileNet v1 classification weights for the backbone")
    t.add_argument("--width-mult", type=float, default=1.0)
    t.add_argument("--image-size", default="300", help="input size: N or HxW (e.g. 384x1248 for KITTI)")
    t.add_argument("--ssdlite", action="store_true", help="depthwise separable extras and predictors")
    t.add_argument("--epochs", type=int, default=100)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--optimizer", choices=("sgd", "adamw", "rmsprop_tf"), default="sgd")
    t.add_argument("--lr", type=float, default=0.01)
    t.add_argument("--weight-decay", type=float, default=4e-5)
    t.add_argument("--warmup-epochs", type=float, default=1.0)
    t.add_argument("--loss", choices=("softmax", "focal"), default="softmax", help="classification loss")
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--freeze-bn", action="store_true", help="keep BatchNorm statistics fixed (automatic when "
                   "--weights is an imported .tflite, whose BN is folded)")
    t.add_argument("--metric", choices=("voc", "voc07", "kitti", "coco"), help="default: kitti for KITTI, else voc")
    t.add_argument("--eval-every", type=int, default=1)
    t.add_argument("--out", required=True, help="run folder (states, best/final weights, history.json)")
    t.add_argument("--resume", help="'auto' or a run/state folder")
    t.add_argument("--device", default="auto")
    t.add_argument("--workers", type=int, default=2)
    t.add_argument("--no-progress", action="store_true")

    e = sub.add_parser("eval", help="mAP of a detector (or of saved predictions) on a dataset",
                       description="mAP table and JSON for a detector, or for a JSON written by `detect predict`.")
    _data_args(e, "test")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="detector weights (.safetensors, or a detection .tflite)")
    src.add_argument("--predictions", help="detections JSON from `detect predict --format json` / detections.json")
    e.add_argument("--metric", choices=("voc", "voc07", "kitti", "coco"))
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--device", default="auto")
    e.add_argument("--json", dest="json_out", help="also write the metrics here")

    pr = sub.add_parser("predict", help="detections for images (JSON) and pictures with boxes",
                        description="Detect objects in images; print JSON or a table; --out writes pictures.")
    pr.add_argument("inputs", nargs="+", metavar="IMAGE|DIR")
    pr.add_argument("--weights", required=True, help="detector weights (.safetensors, or a detection .tflite)")
    pr.add_argument("--out", help="folder for <image>.jpg with boxes drawn and detections.json")
    pr.add_argument("--format", choices=("table", "json"), default="table")
    pr.add_argument("--score-threshold", type=float, default=0.3)
    pr.add_argument("--batch-size", type=int, default=8)
    pr.add_argument("--device", default="auto")

    c = sub.add_parser("convert", help="import TF Lite's detect.tflite (COCO SSD) into a weights file",
                       description="Import a TF Object Detection API SSD-MobileNet v1 .tflite export.")
    c.add_argument("src", help="detect.tflite")
    c.add_argument("--labelmap", help="labelmap.txt (default: beside the .tflite)")
    c.add_argument("--out", required=True, help="output .safetensors")

    x = sub.add_parser("export", help="ONNX export of a detector, with or without NMS",
                       description="Export a detector to ONNX. Post-processing (score function, NMS mode, thresholds, "
                       "top-k, max detections) is the model's own unless a flag below changes it; the graph ends in "
                       "detections (N, 7): batch, x1, y1, x2, y2 (normalised), score, class; or, without NMS, in "
                       "boxes (B, A, 4) and scores (B, A, C).")
    x.add_argument("--weights", required=True, help="detector weights (.safetensors, or a detection .tflite)")
    x.add_argument("--out", required=True, help="output .onnx")
    x.add_argument("--nms", choices=("model", "per-class", "class-agnostic", "none"), default="model",
                   help="per-class NMS (SSD), class-agnostic (TF Lite: each anchor keeps its best class), none (end "
                   "at boxes and scores); default: the model's mode")
    x.add_argument("--no-nms", action="store_true", help="same as --nms none")
    x.add_argument("--score-threshold", type=float)
    x.add_argument("--iou-threshold", type=float)
    x.add_argument("--pre-nms-top-k", type=int, help="candidates kept before NMS (per class in per-class mode)")
    x.add_argument("--max-detections", type=int, help="detections per image")


def _image_size(text: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise ValueError(f"--image-size must be N or HxW, got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 32:
        raise ValueError(f"--image-size must be N or HxW with sides >= 32, got {text!r}")
    return parts[0], parts[1]


def _dataset(args: argparse.Namespace, split: str) -> Any:
    from ..detection.datasets import read_dataset

    names = [c.strip() for c in args.classes.split(",")] if args.classes else None
    kw: dict[str, Any] = {}
    if args.data_format == "kitti":
        kw = {"val_fraction": args.val_fraction, "seed": args.seed}
    elif args.data_format == "coco":
        kw = {"image_dir": args.image_dir}
    ds = read_dataset(args.data_format, args.data, split, names, **kw)
    if ds.problems:
        print(f"{len(ds.problems)} annotation problem(s) in {args.data} ({split}):", file=sys.stderr)
        for line in ds.problems[:20]:
            print(f"  {line}", file=sys.stderr)
        if len(ds.problems) > 20:
            print(f"  ... and {len(ds.problems) - 20} more", file=sys.stderr)
    return ds


def load_detector(weights: str, map_location: Any = "cpu") -> Any:
    """A detector from our weights file or straight from a detection ``.tflite``."""
    from .. import detection  # noqa: F401  (registers the ssd_mobilenet_v1 builder)
    from ..checkpoint import load

    if str(weights).lower().endswith(".tflite"):
        from ..detection.tflite_import import import_detect_tflite

        return import_detect_tflite(weights).to(map_location)
    model = load(weights, map_location=map_location)
    if type(model).__name__ != "SSD":
        raise ValueError(f"{weights} holds a {type(model).__name__}, not a detector")
    return model


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


def _folded_bn(model: Any) -> bool:
    meta = getattr(model, "weights_metadata", None) or {}
    return (meta.get("extra") or {}).get("format") == "tflite"


def _train(args: argparse.Namespace) -> int:
    from .. import detection  # noqa: F401
    from ..checkpoint import load_state_strict, read
    from ..detection.ssd import SSD, SSDConfig
    from ..detection.train import DetTrainConfig, train_detector

    train_set = _dataset(args, args.split)
    val_set = _dataset(args, args.val_split) if args.val_split else None
    names = train_set.class_names
    if args.weights:
        model = load_detector(args.weights)
        if model.config.num_classes != len(names):
            model.reset_classes(len(names))
    else:
        import torch

        torch.manual_seed(args.seed)  # --seed fixes the initial weights too, not only the data order
        model = SSD(SSDConfig(num_classes=len(names), width_mult=args.width_mult,
                              image_size=_image_size(args.image_size), ssdlite=args.ssdlite))
    if args.backbone_weights:
        state, meta = read(args.backbone_weights)
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        load_state_strict(model.backbone, state, args.backbone_weights)
    metric = args.metric or ("kitti" if args.data_format == "kitti" else "voc")
    cfg = DetTrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                         weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, classification=args.loss,
                         augment=not args.no_augment, metric=metric, eval_every=args.eval_every,
                         workers=args.workers, seed=args.seed, device=args.device,
                         freeze_bn=args.freeze_bn or _folded_bn(model))
    model.train()
    r = train_detector(model, train_set, val_set, cfg, args.out, resume=args.resume, progress=not args.no_progress,
                       log=lambda s: print(s, flush=True))
    if not r["is_main"]:
        return 0
    out = Path(args.out)
    (out / "history.json").write_text(json.dumps(r["history"], indent=1))
    print(f"final weights: {r['final']}" + (f"; best ({metric} mAP {r['best_map']:.4f}): {r['best']}"
                                            if r["best"] else ""))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ..detection.evaluate import evaluate_detector, score_detections
    from ..distributed import resolve_device

    ds = _dataset(args, args.split)
    metric = args.metric or ("kitti" if args.data_format == "kitti" else "voc")
    if args.predictions:
        import torch

        from ..detection.predict import read_predictions

        preds = read_predictions(args.predictions, ds.class_names)
        empty = (torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
        missing = [a.image_path.stem for a in ds.annotations if a.image_path.stem not in preds]
        if len(missing) == len(ds.annotations):
            raise ValueError(f"{args.predictions} has no detections for any image of {args.data} ({args.split})")
        dets = [preds.get(a.image_path.stem, empty) for a in ds.annotations]
        r = score_detections(dets, ds, metric)
    else:
        device = resolve_device(args.device)
        model = load_detector(args.weights, device)
        r = evaluate_detector(model, ds, metric=metric, batch_size=args.batch_size, device=device, progress=True)
    _print_metrics(r)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(r, indent=1))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from ..detection.predict import detect_images, list_images, write_outputs
    from ..distributed import resolve_device

    paths = list_images(args.inputs)
    device = resolve_device(args.device)
    model = load_detector(args.weights, device)
    results = detect_images(model, paths, score_threshold=args.score_threshold, batch_size=args.batch_size,
                            device=device)
    if args.out:
        pictures = write_outputs(results, args.out)
        print(f"wrote {len(pictures)} picture(s) and detections.json to {args.out}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            print(f"{r['image']}: {len(r['detections'])} detection(s)")
            for d in r["detections"]:
                x1, y1, x2, y2 = d["box"]
                print(f"  {d['label']:<16}{d['score']:.3f}  [{x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}]")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from ..checkpoint import save
    from ..detection.tflite_import import import_detect_tflite

    model = import_detect_tflite(args.src, args.labelmap)
    meta = model.weights_metadata
    path = save(model, args.out, class_names=meta["class_names"], extra=meta["extra"])
    print(f"wrote {path} (ssd_mobilenet_v1, width {model.config.width_mult}, {model.config.num_classes} classes)")
    return 0


def _export(args: argparse.Namespace) -> int:
    from ..detection.export import export_detector_onnx
    from ..detection.predict import class_names_of

    if args.no_nms and args.nms not in ("model", "none"):
        raise ValueError(f"--no-nms contradicts --nms {args.nms}")
    nms = not args.no_nms and args.nms != "none"
    model = load_detector(args.weights)
    mode = None if args.nms in ("model", "none") else args.nms.replace("-", "_")
    path = export_detector_onnx(model, args.out, nms=nms, nms_mode=mode, score_threshold=args.score_threshold,
                                iou_threshold=args.iou_threshold, pre_nms_top_k=args.pre_nms_top_k,
                                max_detections=args.max_detections, class_names=class_names_of(model))
    pp = model.config.postprocess
    how = (f"{(mode or pp.nms_mode).replace('_', '-')} NMS" if nms else "without NMS") + f", {pp.score_fn} scores"
    print(f"wrote {path} ({how})")
    return 0


def run(args: argparse.Namespace) -> int:
    return {"train": _train, "eval": _eval, "predict": _predict, "convert": _convert,
            "export": _export}[args.detect_command](args)
