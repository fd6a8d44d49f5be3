"""`mobilenet detect`: MobileNet-SSD object detection (train, eval, predict, convert, export).

Examples::

    mobilenet detect predict photo.jpg --weights detect.tflite --out out/        # TF Lite COCO SSD, imported
    mobilenet detect convert detect.tflite --out coco_ssd.safetensors
    mobilenet detect train --data VOCdevkit --format voc --weights coco_ssd.safetensors --epochs 50 --out runs/voc
    mobilenet detect train --config configs/ssd_kitti.toml --data kitti/training --out runs/kitti   # a recipe
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

from . import detect_video

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


# mobilenet.optim.OPTIMIZERS, not imported at start-up
OPTIMIZER_CHOICES = ("sgd", "adamw", "rmsprop_tf", "nadam", "yellowfin")
SCHEDULE_CHOICES = ("exponential", "cosine", "step", "constant")  # mobilenet.optim.SCHEDULES
# `detect train` defaults that differ from the library's DetTrainConfig/DetSetup defaults
CLI_DEFAULTS: dict[str, Any] = {"workers": 2}


def _recipe_flag(p: argparse.ArgumentParser, flag: str, *, key: str | None = None, **kw: Any) -> None:
    """A flag that overrides the recipe key ``key`` (default: the flag's name); absent from ``args`` unless given."""
    dest = key or flag[2:].replace("-", "_")
    p.add_argument(flag, dest=dest, default=argparse.SUPPRESS, **kw)


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="detect_command", metavar="SUBCOMMAND")
    sub.required = True

    t = sub.add_parser("train", help="train or fine-tune an SSD",
                       description="Train or fine-tune an SSD. Settings: defaults, then a TOML recipe (--config, e.g. "
                       "configs/ssd_voc.toml, whose keys are these flags' names; --loss is `classification`, "
                       "--no-augment is `augment = false`), then the flags given. --print-config shows every value.")
    t.add_argument("--config", metavar="TOML", help="recipe file (configs/ssd_*.toml); flags override its keys")
    t.add_argument("--print-config", action="store_true", help="print the resolved settings as JSON and exit")
    _recipe_flag(t, "--data", help="dataset root: VOC folder (VOCdevkit or VOC2007), KITTI training/ folder, or "
                 "COCO annotation JSON")
    _recipe_flag(t, "--format", choices=("voc", "kitti", "coco"))
    _recipe_flag(t, "--split", help="VOC ImageSets/Main list name; KITTI all|train|val")
    _recipe_flag(t, "--val-split", help="split to evaluate on during training (VOC: e.g. test; KITTI: val)")
    _recipe_flag(t, "--classes", help="comma-separated class names (default: the format's standard classes)")
    _recipe_flag(t, "--image-dir", help="COCO: folder of the images (default: beside the JSON)")
    _recipe_flag(t, "--val-fraction", type=float, help="KITTI seeded split: fraction held out")
    _recipe_flag(t, "--seed", type=int, help="data order, augmentation, KITTI split and initial weights")
    _recipe_flag(t, "--weights", help="start from this detector (e.g. the converted COCO SSD); class heads are "
                 "replaced when the class count differs")
    _recipe_flag(t, "--backbone-weights", help="MobileNet v1 classification weights for the backbone")
    _recipe_flag(t, "--width-mult", type=float, help="alpha of a new model (--weights keep theirs)")
    _recipe_flag(t, "--image-size", help="input size: N or HxW (e.g. 384x1248 for KITTI); default: the --weights' "
                 "size, else 300")
    _recipe_flag(t, "--ssdlite", action="store_true", help="depthwise separable extras and predictors (new model)")
    _recipe_flag(t, "--epochs", type=int)
    _recipe_flag(t, "--batch-size", type=int)
    _recipe_flag(t, "--optimizer", choices=OPTIMIZER_CHOICES)
    _recipe_flag(t, "--lr", type=float)
    _recipe_flag(t, "--momentum", type=float)
    _recipe_flag(t, "--weight-decay", type=float)
    _recipe_flag(t, "--schedule", choices=SCHEDULE_CHOICES)
    _recipe_flag(t, "--warmup-epochs", type=float)
    _recipe_flag(t, "--loss", key="classification", choices=("softmax", "focal"), help="classification loss")
    _recipe_flag(t, "--neg-pos-ratio", type=float, help="hard-negative mining: negatives per positive")
    _recipe_flag(t, "--no-augment", key="augment", action="store_false", help="no training augmentation")
    _recipe_flag(t, "--freeze-bn", action="store_true", help="keep BatchNorm statistics fixed (automatic when "
                 "--weights is an imported .tflite, whose BN is folded)")
    _recipe_flag(t, "--metric", choices=("voc", "voc07", "kitti", "coco"), help="default: kitti for KITTI, else voc")
    _recipe_flag(t, "--eval-every", type=int, help="epochs between evaluations (0: only at the end)")
    _recipe_flag(t, "--out", help="run folder (states, best/final weights, history.json, config.json); required")
    _recipe_flag(t, "--resume", help="'auto' or a run/state folder")
    _recipe_flag(t, "--device")
    _recipe_flag(t, "--workers", type=int)
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
    x.add_argument("--int8", action="store_true", help="ONNX Runtime int8 (QDQ) convs, calibrated on --calib images; "
                   "decoding and NMS stay float")
    x.add_argument("--calib", metavar="IMAGE|DIR", nargs="+", help="calibration images for --int8")
    x.add_argument("--calib-count", type=int, default=64, help="at most this many calibration images (default 64)")
    x.add_argument("--score-threshold", type=float)
    x.add_argument("--iou-threshold", type=float)
    x.add_argument("--pre-nms-top-k", type=int, help="candidates kept before NMS (per class in per-class mode)")
    x.add_argument("--max-detections", type=int, help="detections per image")
    detect_video.add_parser(sub)  # `detect video` lives in cli/detect_video.py


def _dataset(fmt: str, root: str, split: str, classes: list[str] | None, *, val_fraction: float = 0.2,
             seed: int = 0, image_dir: str | None = None) -> Any:
    """Read one split, printing annotation problems (file:line: message) to stderr."""
    from ..detection.datasets import read_dataset

    kw: dict[str, Any] = {}
    if fmt == "kitti":
        kw = {"val_fraction": val_fraction, "seed": seed}
    elif fmt == "coco":
        kw = {"image_dir": image_dir}
    ds = read_dataset(fmt, root, split, classes, **kw)
    if ds.problems:
        print(f"{len(ds.problems)} annotation problem(s) in {root} ({split}):", file=sys.stderr)
        for line in ds.problems[:20]:
            print(f"  {line}", file=sys.stderr)
        if len(ds.problems) > 20:
            print(f"  ... and {len(ds.problems) - 20} more", file=sys.stderr)
    return ds


def _args_dataset(args: argparse.Namespace, split: str) -> Any:
    """``_dataset`` from the eval/predict flags (``_data_args``)."""
    names = [c.strip() for c in args.classes.split(",")] if args.classes else None
    return _dataset(args.data_format, args.data, split, names, val_fraction=args.val_fraction, seed=args.seed,
                    image_dir=args.image_dir)


def load_detector(weights: str, map_location: Any = "cpu") -> Any:
    """A detector from our weights file or straight from a detection ``.tflite``."""
    from .. import detection  # noqa: F401  (registers the ssd_mobilenet_v1 builder)
    from ..checkpoint import load

    if str(weights).lower().endswith(".tflite"):
        from ..tflite.ssd import import_detect_tflite

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
    from ..weights import weights_info

    source = weights_info(model).source
    return source is not None and source.format == "tflite"


def _train(args: argparse.Namespace) -> int:
    from dataclasses import fields, replace

    from .. import detection  # noqa: F401
    from ..checkpoint import load_state_strict, read
    from ..detection.ssd import SSD, SSDConfig
    from ..detection.train import (
        DetSetup,
        DetTrainConfig,
        adopt_classes,
        resolve_recipe,
        set_input_size,
        train_detector,
    )

    keys = {f.name for f in (*fields(DetSetup), *fields(DetTrainConfig))}
    given = {k: v for k, v in vars(args).items() if k in keys}  # recipe flags are absent unless given
    setup, cfg = resolve_recipe(args.config, given, defaults=CLI_DEFAULTS)
    if args.print_config:
        print(json.dumps({**setup.to_dict(), **cfg.to_dict()}, indent=2))
        return 0
    for key in ("data", "out"):
        if getattr(setup, key) is None:
            raise ValueError(f"--{key} is required (or {key} = ... in the --config recipe)")
    assert setup.data is not None and setup.out is not None

    def dataset(split: str) -> Any:
        return _dataset(setup.format, setup.data, split, setup.class_names(), val_fraction=setup.val_fraction,
                        seed=cfg.seed, image_dir=setup.image_dir)

    train_set = dataset(setup.split)
    val_set = dataset(setup.val_split) if setup.val_split else None
    names = train_set.class_names
    size = setup.image_hw()
    if setup.weights:
        model = load_detector(setup.weights)
        adopt_classes(model, names)
        old = model.config.image_size
        if size and set_input_size(model, size):
            print(f"input size {old[0]}x{old[1]} -> {size[0]}x{size[1]} (anchors generated for the new size)")
    else:
        import torch

        torch.manual_seed(cfg.seed)  # --seed fixes the initial weights too, not only the data order
        model = SSD(SSDConfig(num_classes=len(names), width_mult=setup.width_mult, ssdlite=setup.ssdlite,
                              **({"image_size": size} if size else {})))
    if setup.backbone_weights:
        state, meta = read(setup.backbone_weights)
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        load_state_strict(model.backbone, state, setup.backbone_weights)
    if _folded_bn(model):
        cfg = replace(cfg, freeze_bn=True)
    model.train()
    r = train_detector(model, train_set, val_set, cfg, setup.out, resume=setup.resume, progress=not args.no_progress,
                       log=lambda s: print(s, flush=True))
    if not r["is_main"]:
        return 0
    out = Path(setup.out)
    (out / "history.json").write_text(json.dumps(r["history"], indent=1))
    # the resolved settings (recipe + flags) beside the weights: what this run was
    (out / "config.json").write_text(json.dumps({**setup.to_dict(), **cfg.to_dict()}, indent=2))
    print(f"final weights: {r['final']}" + (f"; best ({cfg.metric} mAP {r['best_map']:.4f}): {r['best']}"
                                            if r["best"] else ""))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ..detection.evaluate import evaluate_detector, score_detections
    from ..distributed import resolve_device

    ds = _args_dataset(args, args.split)
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
            if "error" in r:
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
    from ..detection.predict import class_names_of

    if args.no_nms and args.nms not in ("model", "none"):
        raise ValueError(f"--no-nms contradicts --nms {args.nms}")
    if bool(args.int8) != bool(args.calib):
        raise ValueError("--int8 needs --calib IMAGE|DIR (calibration images), and --calib is only for --int8")
    nms = not args.no_nms and args.nms != "none"
    model = load_detector(args.weights)
    mode = None if args.nms in ("model", "none") else args.nms.replace("-", "_")
    options = dict(nms=nms, nms_mode=mode, score_threshold=args.score_threshold, iou_threshold=args.iou_threshold,
                   pre_nms_top_k=args.pre_nms_top_k, max_detections=args.max_detections,
                   class_names=class_names_of(model))
    if args.int8:
        path = export_detector_int8(model, args.out, _calibration(model, args.calib, args.calib_count), **options)
    else:
        path = export_detector_onnx(model, args.out, **options)
    pp = model.config.postprocess
    how = (f"{(mode or pp.nms_mode).replace('_', '-')} NMS" if nms else "without NMS") + f", {pp.score_fn} scores"
    print(f"wrote {path} ({how}{', int8 convs' if args.int8 else ''})")
    return 0


def _calibration(model: Any, inputs: list[str], count: int) -> Any:
    """(N, 3, H, W) model inputs from the first ``count`` images under ``inputs``."""
    import torch

    from ..data.decode import ImageDecodeError, read_image
    from ..detection.predict import list_images, model_input

    paths = list_images(inputs)[:count]
    if not paths:
        raise ValueError(f"no images for calibration in {' '.join(inputs)}")
    inputs_ = []
    for p in paths:
        try:
            inputs_.append(model_input(read_image(p), model))
        except ImageDecodeError as e:  # left out and reported, never replaced by another image
            print(f"mobilenet detect export: calibration image left out: {e}", file=sys.stderr)
    if not inputs_:
        raise ValueError(f"no readable calibration image in {' '.join(inputs)}")
    return torch.stack(inputs_)


def run(args: argparse.Namespace) -> int:
    if args.detect_command == "video":
        return detect_video.run(args)
    return {"train": _train, "eval": _eval, "predict": _predict, "convert": _convert,
            "export": _export}[args.detect_command](args)
