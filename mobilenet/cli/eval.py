"""`mobilenet eval`: top-1/top-5/loss/per-class accuracy of a weights file on labelled images.

The data's class folders are matched by name to the class list stored with the weights, so a
folder holding only some of the classes (e.g. a few ImageNet WordNet ids) is scored against the
right outputs. A flat folder of images is labelled by ``--labels FILE`` (``<file name> <label>``
lines; label: a class name such as a WordNet id, or an index into the weights' class list) or by
``--labels from-filename`` (``n01440764_tench.JPEG`` -> ``n01440764``); labels are matched by name,
so 1001-way TF models (``background`` first) need no offset. Files listed but missing, images
without a label and images that cannot be decoded are left out and reported (count and names),
not fatal and never replaced by another image; ``images`` counts only those scored. BatchNorm runs
in eval mode. Examples::

    mobilenet eval --weights runs/digits/best.safetensors --data digits#test
    mobilenet eval --weights w.safetensors --data val/ --format json --confusion
    mobilenet eval --weights w.safetensors --data ILSVRC2012_img_val/ --labels val_labels.txt
    mobilenet eval --weights w.safetensors --data imagenet/images --labels from-filename
"""

from __future__ import annotations

import argparse
import warnings

from .flags import add_threads_flag, add_workers_flag, positive_int, workers_from

NAME = "eval"
MAX_SKIPPED_SHOWN = 20  # text output; JSON lists every skipped file
HELP = "evaluate a weights file on an image folder/archive: top-1, top-5, loss, per-class accuracy"
DESCRIPTION = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", required=True,
                   help="weights file (.safetensors written by mobilenet), or a deployed file run in its own runtime "
                        "(.onnx, .tflite, .pte, OpenVINO .xml, TorchScript .pt, .pt2)")
    p.add_argument("--data", required=True,
                   help="labelled images: folder of class folders, .zip, .tar, cifar10:<path>#test, digits#test")
    p.add_argument("--labels", metavar="FILE|from-filename",
                   help="label a flat folder of images: a file of '<file name> <label>' lines, or from-filename "
                        "(the file-name prefix before the first '_', e.g. n01440764_tench.JPEG)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    p.add_argument("--confusion", action="store_true", help="include the confusion matrix")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass (default: 64)")
    add_workers_flag(p)
    add_threads_flag(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help="autocast dtype")


def _drop_empty_classes(res: dict) -> None:
    """Keep only classes with images in ``per_class`` (and the confusion rows): a flat folder's dataset
    classes are the weights' whole class list (1000+), most of them absent from a small labelled set."""
    keep = [i for i, row in enumerate(res["per_class"].values()) if row["count"]]
    res["per_class"] = {name: row for name, row in res["per_class"].items() if row["count"]}
    if "confusion" in res:
        res["confusion"] = [res["confusion"][i] for i in keep]


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data import eval_transform, make_eval_loader, open_image_dataset
    from ..distributed import resolve_device
    from ..evaluate import evaluate
    from ..predict import model_preprocessing, require_classifier
    from ..runtimes import describe, is_artifact, open_model
    from ..strict_json import dumps

    device = torch.device("cpu") if is_artifact(args.weights) and args.device == "auto" else resolve_device(args.device)
    model = open_model(args.weights, device=device, threads=torch.get_num_threads())
    require_classifier(model, str(args.weights))
    classes = model.weights_info.classes
    pre = model_preprocessing(model)
    with warnings.catch_warnings():  # the skipped files are reported below, with every name
        warnings.simplefilter("ignore")
        if args.labels is None:
            ds = open_image_dataset(args.data)
        else:
            # labels resolve against the weights' class list: names first, integers as indices into it
            ds = open_image_dataset(args.data, labels=args.labels, class_names=classes)
    batches = make_eval_loader(ds, args.batch_size, workers=workers_from(args), transform=eval_transform(pre),
                               pin_memory=device.type == "cuda")
    res = evaluate(model, batches, device=device, class_names=classes,
                   dataset_classes=ds.class_names, confusion=args.confusion, amp=args.amp)
    if args.labels is not None:
        _drop_empty_classes(res)
    skipped = [{"name": name, "reason": reason} for name, reason in batches.skipped]
    res = {"weights": str(args.weights), "runtime": describe(model), "data": str(args.data), "labels": args.labels,
           **res, "skipped_count": len(skipped), "skipped": skipped}
    if args.format == "json":
        print(dumps(res, indent=2))
        return 0
    print(f"{args.weights} on {args.data}: {res['count']} images ({res['runtime']})")
    print(f"top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  loss {res['loss']:.4f}")
    if skipped:
        print(f"skipped {len(skipped)} file(s):")
        for row in skipped[:MAX_SKIPPED_SHOWN]:
            print(f"  {row['name']}: {row['reason']}")
        if len(skipped) > MAX_SKIPPED_SHOWN:
            print(f"  ... and {len(skipped) - MAX_SKIPPED_SHOWN} more (--format json lists them all)")
    print(f"{'class':<24} {'images':>7} {'top-1 %':>8}")
    for name, row in res["per_class"].items():
        acc = f"{row['top1']:.2f}" if row["top1"] is not None else "-"
        print(f"{name:<24} {row['count']:>7} {acc:>8}")
    if args.confusion:
        print("confusion (rows: true class, columns: predicted output index):")
        for name, row in zip(res["per_class"], res["confusion"], strict=True):
            print(f"{name:<24} " + " ".join(f"{v:>4}" for v in row))
    return 0
