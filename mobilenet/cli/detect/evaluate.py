"""`mobilenet detect eval`: mAP of a detector, or of the detections `detect predict` saved, on a dataset split."""

from __future__ import annotations

import argparse

from ... import strict_json
from ..flags import CLIError, add_threads_flag, float_in, positive_int
from ..paths import check_output_file
from .weights import WEIGHTS, add_runtime_flags


def _class_list(text: str) -> str:
    """argparse ``type=``: comma-separated class names, each once (a name twice would make two classes of one)."""
    names = [c.strip() for c in text.split(",") if c.strip()]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"class names must differ, got {', '.join(twice)} more than once")
    return text


def _scorable(ds, data: str, split: str) -> None:
    """Refuse, in one line, a split with nothing to score: no image (all left out, say why), or no ground-truth box
    of any class (every mAP would be undefined: a NaN is no answer)."""
    if not ds.annotations:
        why = f"; {len(ds.problems)} problem(s), e.g. {ds.problems[0]}" if ds.problems else ""
        raise CLIError(f"no images to evaluate in {data} ({split}){why}")
    if sum(len(a.boxes) for a in ds.annotations) == 0:
        why = f"; {len(ds.problems)} annotation problem(s), e.g. {ds.problems[0]}" if ds.problems else ""
        raise CLIError(f"{data} ({split}) has no ground-truth box of the classes {', '.join(ds.class_names[:5])}"
                       f"{', ...' if len(ds.class_names) > 5 else ''}: nothing to score{why}")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    e = sub.add_parser("eval", help="mAP of a detector (or of saved predictions) on a dataset",
                       description="mAP table and JSON for a detector, or for a JSON written by `detect predict`.")
    e.add_argument("--data", required=True, help="dataset root: VOC folder (VOCdevkit or VOC2007), KITTI training/ "
                   "folder, or COCO annotation JSON")
    e.add_argument("--data-format", choices=("voc", "kitti", "coco"), default="voc")
    e.add_argument("--split", default="test", help="VOC ImageSets/Main list name; KITTI all|train|val")
    e.add_argument("--classes", type=_class_list, help="comma-separated class names (default: the format's standard "
                   "classes)")
    e.add_argument("--image-dir", help="COCO: folder of the images (default: beside the JSON)")
    e.add_argument("--val-fraction", type=float_in(0, 1, high_open=True), default=0.2,
                   help="KITTI seeded split: fraction held out (default: 0.2)")
    e.add_argument("--seed", type=int, default=0)
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help=WEIGHTS)
    src.add_argument("--predictions", help="detections JSON from `detect predict --format json` / detections.json")
    e.add_argument("--label-map", metavar="MAP", help="how the detector's (or the predictions') class names map to the "
                   "dataset's: NAME=DATASET_NAME pairs, comma-separated, or a JSON file (default: the same names in "
                   "any case, and VOC's spellings of COCO's classes)")
    e.add_argument("--metric", choices=("voc", "voc07", "kitti", "coco"))
    e.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass (default: 8)")
    add_threads_flag(e)
    add_runtime_flags(e)
    e.add_argument("--json", dest="json_out", help="also write the metrics here")
    return e


def run(args: argparse.Namespace) -> int:
    from ...detection.evaluate import (
        class_map_line,
        evaluate_detector,
        matched_classes,
        metrics_table,
        score_predictions,
    )
    from ...detection.labels import parse_label_map
    from ...engine.detect import read_split
    from ...recipe import DetectConfig
    from ...runtimes import describe
    from ...weights import weights_info
    from .._progress import print_problems
    from .weights import load

    label_map = parse_label_map(args.label_map)  # before any reading: a bad map is one line at once
    if args.json_out:
        check_output_file(args.json_out, flag="--json", inputs=[args.data, args.weights, args.predictions])
    cfg = DetectConfig(data=args.data, data_format=args.data_format, classes=args.classes, image_dir=args.image_dir,
                       val_fraction=args.val_fraction, seed=args.seed, metric=args.metric)
    ds = read_split(cfg, args.split)
    _scorable(ds, args.data, args.split)
    if args.predictions:
        print_problems({args.split: ds.problems}, args.data)
        r = score_predictions(args.predictions, ds, cfg.metric, label_map)  # type: ignore[arg-type]
    else:
        model, device = load(args)
        names = weights_info(model).classes
        if names and not matched_classes(names, ds.class_names, label_map):  # before minutes of predicting
            raise CLIError(f"the model's classes ({', '.join(names[:5])}, ...) share no name with the dataset's "
                           f"({', '.join(ds.class_names[:5])}, ...): map them with --label-map")
        print_problems({args.split: ds.problems}, args.data)  # a report of the run, once it can run
        r = evaluate_detector(model, ds, metric=cfg.metric,  # type: ignore[arg-type]
                              batch_size=args.batch_size, device=device, progress=True, label_map=label_map)
        r["runtime"] = describe(model)
    if (line := class_map_line(r)) is not None:
        print(line)
    print(metrics_table(r).render("table"))
    print(f"{r['metric']} mAP: {r['map']:.4f}")
    if args.json_out:
        from ...checkpoint import atomic_write

        with atomic_write(args.json_out, "w") as f:  # a metric without ground truth (NaN) is written null
            f.write(strict_json.dumps(r, indent=1))
    return 0
