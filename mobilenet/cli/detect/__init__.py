"""`mobilenet detect`: MobileNet-SSD object detection (train, eval, predict, convert, export, video).

Examples::

    mobilenet detect predict photo.jpg --weights detect.tflite --out out/        # TF Lite COCO SSD, imported
    mobilenet detect convert detect.tflite --out coco_ssd.safetensors
    mobilenet detect train --data VOCdevkit --weights coco_ssd.safetensors --epochs 50 --out runs/voc
    mobilenet detect train --config configs/ssd_kitti.toml --data kitti/training --out runs/kitti   # a recipe
    mobilenet detect eval --weights runs/voc/best.safetensors --data VOCdevkit --split test
    mobilenet detect eval --predictions out/detections.json --data VOCdevkit --split test
    mobilenet detect export --weights runs/voc/best.safetensors --out ssd.onnx [--nms per-class|class-agnostic|none]

One module per subcommand in this package, each with ``add_parser(sub)`` and ``run(args)``.
"""

from __future__ import annotations

import argparse

from .. import detect_video
from . import convert, evaluate, export, predict, train

NAME = "detect"
HELP = "object detection with MobileNet-SSD: train, eval, predict, convert, export, video"
DESCRIPTION = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="detect_command", metavar="SUBCOMMAND")
    sub.required = True
    for module in (train, evaluate, predict, convert, export):
        module.add_parser(sub).set_defaults(_detect=module.run)
    detect_video.add_parser(sub).set_defaults(_detect=detect_video.run)  # `detect video`: cli/detect_video.py


def run(args: argparse.Namespace) -> int:
    return args._detect(args)
