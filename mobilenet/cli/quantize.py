"""`mobilenet quantize`: int8 post-training quantization (or QAT fine-tuning), with a before/after report."""

from __future__ import annotations

import argparse

from .. import strict_json

NAME = "quantize"
HELP = "int8 quantization (PTQ, or --qat fine-tuning) with size/latency/accuracy before and after"
DESCRIPTION = """int8 post-training static quantization with per-channel weights, calibrated on N images.

  mobilenet quantize model.safetensors --calib ../shared/data/imagenet/images -o model_int8.pt
  mobilenet quantize model.safetensors --calib digits#train -o model_int8.onnx --backend onnxruntime
  mobilenet quantize model.safetensors --calib digits#train --qat --epochs 2 --train digits#train -o q.pt

A quantization-aware trained import (a uint8 .tflite) carries the activation ranges and weight grids it was
trained on; they are used as they are (the input, every ReLU6 output and the weights on the file's own grid),
--calibrated-ranges calibrates instead.
The torch backend writes TorchScript (torch.jit.load runs it); the onnxruntime backend writes int8 ONNX (QDQ).
The report compares size, batch-1 latency (timed interleaved in one run) and top-1 (with --eval), or the top-1
agreement of the int8 and float models on the calibration images."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .flags import positive_float, positive_int

    p.add_argument("weights", help="weights file, or a model name (random weights: timing only)")
    p.add_argument("-o", "--output", required=True, help="int8 model to write (.pt for torch, .onnx for onnxruntime)")
    p.add_argument("--calib", required=True, help="calibration images: a folder (searched recursively) or a dataset")
    p.add_argument("--num-calib", type=positive_int, default=100,
                   help="calibration images to use (spread over the source)")
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default=None,
                   help="int8 runtime (default: from the output suffix, .onnx -> onnxruntime)")
    p.add_argument("--engine", choices=("x86", "fbgemm", "onednn"), default="x86", help="torch int8 kernels")
    p.add_argument("--observer", choices=("histogram", "minmax"), default="minmax",
                   help="activation range estimation for PTQ (histogram: searches a clipping range, slower)")
    p.add_argument("--calibrated-ranges", action="store_true",
                   help="ignore the activation ranges and weight grids a quantization-aware trained import recorded "
                        "(e.g. from a uint8 .tflite) and calibrate everything")
    p.add_argument("--eval", default=None, help="labelled images for top-1 before/after (folder or dataset)")
    p.add_argument("--num-eval", type=positive_int, default=None, help="evaluation images to use (default: all)")
    p.add_argument("--qat", action="store_true", help="quantization-aware fine-tuning instead of plain PTQ")
    p.add_argument("--epochs", type=positive_int, default=1, help="QAT epochs")
    p.add_argument("--train", default=None, help="labelled training data for --qat")
    p.add_argument("--lr", type=positive_float, default=1e-4, help="QAT learning rate (Adam, cosine decay)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="QAT batch size")
    p.add_argument("--repeats", type=positive_int, default=30, help="latency samples per model")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for the timing (default: torch's)")
    p.add_argument("--json", default=None, help="also write the report as JSON here")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..checkpoint import atomic_write
    from ..deploy.int8 import quantize_file
    from ..table import Table
    from ..zoo import VARIANTS
    from .paths import check_output_file

    # before minutes of calibration: a file that is what its name says, where it can be written
    backend = args.backend or ("onnxruntime" if args.output.endswith(".onnx") else "torch")
    inputs = [args.weights, args.calib, args.eval, args.train]
    check_output_file(args.output, suffixes=(".onnx",) if backend == "onnxruntime" else (".pt",),
                      what=f"--backend {backend}", inputs=inputs)
    if args.json:
        check_output_file(args.json, flag="--json", inputs=[*inputs, args.output])
    if args.weights in VARIANTS and not Path(args.weights).exists():
        print(f"note: {args.weights} has random weights; accuracy numbers are meaningless, timings are not")
    r = quantize_file(args.weights, args.output, args.calib, num_calib=args.num_calib, backend=args.backend,
                      engine=args.engine, observer=args.observer, calibrated_ranges=args.calibrated_ranges,
                      eval_data=args.eval, num_eval=args.num_eval, qat=args.qat, train_data=args.train,
                      epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, repeats=args.repeats,
                      threads=args.threads)
    used = r["recorded_grids"]
    if used["activation_ranges"] or used["weight_grids"]:
        print(f"used the source's recorded quantization: {used['activation_ranges']} activation ranges, "
              f"{used['weight_grids']} weight grids (--calibrated-ranges to calibrate instead)")
    print(f"wrote {r['output']}")
    rows = [["size (MB)", r["size_mb"]["fp32_state_dict"], r["size_mb"]["int8_file"], ""],
            ["latency b=1 (ms)", r["latency_ms"]["fp32"], r["latency_ms"]["int8"],
             f"{r['speedup']:.2f}x, {r['threads']} threads, interleaved blocks, median of {r['repeats']}"]]
    if "top1" in r:
        rows.append(["top-1 (%)", r["top1"]["fp32"], r["top1"]["int8"], f"{r['images']} images from {args.eval}"])
    print(Table(["", "fp32", "int8", ""], rows).render("table"))
    print(f"top-1 agreement int8 vs fp32: {r['top1_agreement']:.1f}% of {r['images']} images")
    if args.json:
        with atomic_write(args.json, "w") as f:
            strict_json.dump(r, f, indent=2)
    return 0
