"""`mobilenet detect convert`: import TF Lite's ``detect.tflite`` (the COCO SSD) into a weights file."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    c = sub.add_parser("convert", help="import TF Lite's detect.tflite (COCO SSD) into a weights file",
                       description="Import a TF Object Detection API SSD-MobileNet v1 .tflite export.")
    c.add_argument("src", help="detect.tflite")
    c.add_argument("--labelmap", help="labelmap.txt (default: beside the .tflite)")
    c.add_argument("--out", required=True, help="output .safetensors")
    return c


def run(args: argparse.Namespace) -> int:
    from ...checkpoint import save
    from ...tflite.ssd import import_detect_tflite
    from ..paths import check_output_file

    check_output_file(args.out, flag="--out", suffixes=(".safetensors",), what="detector weights",
                      inputs=[args.src, args.labelmap])
    model = import_detect_tflite(args.src, args.labelmap)
    path = save(model, args.out, info=model.weights_info)
    print(f"wrote {path} (ssd_mobilenet_v1, width {model.config.width_mult}, {model.config.num_classes} classes)")
    return 0
