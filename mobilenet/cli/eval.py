"""`mobilenet eval`: top-1/top-5/loss/per-class accuracy of a weights file on labelled images.

The data's class folders are matched by name to the class list stored with the weights, so a
folder holding only some of the classes (e.g. a few ImageNet WordNet ids) is scored against the
right outputs. BatchNorm runs in eval mode. Examples::

    mobilenet eval --weights runs/digits/best.safetensors --data digits#test
    mobilenet eval --weights w.safetensors --data val/ --format json --confusion
"""

from __future__ import annotations

import argparse
import json

NAME = "eval"
HELP = "evaluate a weights file on an image folder/archive: top-1, top-5, loss, per-class accuracy"
DESCRIPTION = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", required=True, help="weights file (.safetensors written by mobilenet)")
    p.add_argument("--data", required=True,
                   help="labelled images: folder of class folders, .zip, .tar, cifar10:<path>#test, digits#test")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    p.add_argument("--confusion", action="store_true", help="include the confusion matrix")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help="autocast dtype")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint import load
    from ..data import eval_transform, open_image_dataset
    from ..distributed import resolve_device
    from ..evaluate import evaluate
    from ..predict import model_preprocessing

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = resolve_device(args.device)
    model = load(args.weights, map_location=device)
    meta = model.weights_metadata
    pre = model_preprocessing(model)
    ds = open_image_dataset(args.data, transform=eval_transform(pre))
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers,
                                         pin_memory=device.type == "cuda")
    res = evaluate(model, loader, device=device, class_names=meta.get("class_names"),
                   dataset_classes=ds.class_names, confusion=args.confusion, amp=args.amp)
    res = {"weights": str(args.weights), "data": str(args.data), **res}
    if args.format == "json":
        print(json.dumps(res, indent=2))
        return 0
    print(f"{args.weights} on {args.data}: {res['count']} images")
    print(f"top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  loss {res['loss']:.4f}")
    print(f"{'class':<24} {'images':>7} {'top-1 %':>8}")
    for name, row in res["per_class"].items():
        acc = f"{row['top1']:.2f}" if row["top1"] is not None else "-"
        print(f"{name:<24} {row['count']:>7} {acc:>8}")
    if args.confusion:
        print("confusion (rows: true class, columns: predicted output index):")
        for name, row in zip(res["per_class"], res["confusion"], strict=True):
            print(f"{name:<24} " + " ".join(f"{v:>4}" for v in row))
    return 0
