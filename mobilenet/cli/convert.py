"""`mobilenet convert`: import published MobileNet v1 weights (Keras, TF Lite, TF-slim, Caffe, timm)."""

from __future__ import annotations

import argparse

NAME = "convert"
HELP = "import pretrained weights (Keras .h5/.keras, .tflite, TF-slim .ckpt, .caffemodel, timm/HF state dicts)"
DESCRIPTION = """Import pretrained MobileNet v1 weights into a mobilenet weights file (.safetensors).

The format, width multiplier, class count and preprocessing are read from the file; the resolution
comes from the file name or input shape where it says, else --resolution (default 224).

examples:
  mobilenet convert mobilenet_2_5_224_tf_no_top.h5 --out keras_025_224.safetensors
  mobilenet convert mobilenet_v1_0.25_128_quant.tflite --out tflite_025_128.safetensors
  mobilenet convert mobilenet_v1_1.0_224.ckpt.index --drop-background
  mobilenet convert mobilenet.caffemodel --prototxt mobilenet_deploy.prototxt
  mobilenet convert mobilenetv1_100.safetensors --source-format timm
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .flags import int_at_least, positive_float

    p.add_argument("src", help="source weights (for TF-slim: the .ckpt prefix or its .index file)")
    p.add_argument("--out", "-o", help="output .safetensors (default: <source name>.safetensors here)")
    # --source-format, not --format: everywhere else --format is the format of a command's output
    p.add_argument("--source-format", default="auto", choices=("auto", "keras", "tflite", "slim", "caffe", "timm"),
                   help="the source file's format (default: told from its name and first bytes)")
    p.add_argument("--width-mult", type=positive_float, help="expected width multiplier (checked against the file)")
    p.add_argument("--resolution", type=int_at_least(32), help="input resolution when the file does not tell it")
    p.add_argument("--drop-background", action="store_true",
                   help="turn a 1001-way TF classifier (background at 0) into the 1000 ImageNet classes")
    p.add_argument("--prototxt", help="Caffe deploy prototxt, cross-checked against the .caffemodel")


def run(args: argparse.Namespace) -> int:
    from ..convert import convert
    from .flags import CLIError
    from .paths import check_output_file

    caffe = args.source_format == "caffe" or (args.source_format == "auto" and args.src.lower().endswith(".caffemodel"))
    if args.prototxt and not caffe:
        raise CLIError(f"--prototxt is for a Caffe .caffemodel, not {args.src} (--source-format caffe if it is one)")
    if args.out:  # before the import: a .safetensors name that is not one of the sources
        check_output_file(args.out, flag="--out", suffixes=(".safetensors",), what="converted weights",
                          inputs=[args.src, args.prototxt])
    try:
        out = convert(args.src, args.out, args.source_format, width_mult=args.width_mult, resolution=args.resolution,
                      drop_background=args.drop_background, prototxt=args.prototxt)
    except ImportError as e:  # an optional reader (h5py) is missing: say which, no traceback
        raise CLIError(str(e)) from None
    from ..checkpoint import read_metadata as read_meta

    meta = read_meta(out)
    cfg, extra = meta["config"], meta["extra"]
    size = cfg.get("resolution") or "x".join(str(v) for v in cfg.get("image_size", ()))
    print(f"wrote {out}: {extra['format']} {extra['source']} -> {meta['architecture']}, width {cfg['width_mult']:g}, "
          f"{size} px, {cfg['num_classes']} classes, preset {cfg['preset']}")
    return 0
