"""`mobilenet quantize`: int8 post-training quantization (or QAT fine-tuning), with a before/after report."""

from __future__ import annotations

import argparse

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
    p.add_argument("weights", help="weights file, or a model name (random weights: timing only)")
    p.add_argument("-o", "--output", required=True, help="int8 model to write (.pt for torch, .onnx for onnxruntime)")
    p.add_argument("--calib", required=True, help="calibration images: a folder (searched recursively) or a dataset")
    p.add_argument("--num-calib", type=int, default=100, help="calibration images to use (spread over the source)")
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default=None,
                   help="int8 runtime (default: from the output suffix, .onnx -> onnxruntime)")
    p.add_argument("--engine", choices=("x86", "fbgemm", "onednn"), default="x86", help="torch int8 kernels")
    p.add_argument("--observer", choices=("histogram", "minmax"), default="minmax",
                   help="activation range estimation for PTQ (histogram: searches a clipping range, slower)")
    p.add_argument("--calibrated-ranges", action="store_true",
                   help="ignore the activation ranges and weight grids a quantization-aware trained import recorded "
                        "(e.g. from a uint8 .tflite) and calibrate everything")
    p.add_argument("--eval", default=None, help="labelled images for top-1 before/after (folder or dataset)")
    p.add_argument("--num-eval", type=int, default=None, help="evaluation images to use (default: all)")
    p.add_argument("--qat", action="store_true", help="quantization-aware fine-tuning instead of plain PTQ")
    p.add_argument("--epochs", type=int, default=1, help="QAT epochs")
    p.add_argument("--train", default=None, help="labelled training data for --qat")
    p.add_argument("--lr", type=float, default=1e-4, help="QAT learning rate (Adam, cosine decay)")
    p.add_argument("--batch-size", type=int, default=32, help="QAT batch size")
    p.add_argument("--repeats", type=int, default=30, help="latency samples per model")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the timing (default: torch's)")
    p.add_argument("--json", default=None, help="also write the report as JSON here")


def _train_batches(args: argparse.Namespace, model, pre):  # -> Callable[[], Iterable[(x, y)]]
    import torch

    from ..data import open_image_dataset
    from ..evaluate import label_map
    from ..weights import weights_info

    ds = open_image_dataset(args.train, transform=pre)
    mapping = torch.tensor(label_map(ds.class_names, weights_info(model).classes, model.num_classes))
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True,
                                         drop_last=len(ds) > args.batch_size,
                                         generator=torch.Generator().manual_seed(0))
    return lambda: ((x, mapping[y]) for x, y in loader)


def run(args: argparse.Namespace) -> int:
    import json
    import os
    import tempfile
    from pathlib import Path

    import torch

    from ..checkpoint import atomic_write
    from ..deploy.bench import num_threads, time_interleaved
    from ..deploy.calibration import load_images, load_labelled
    from ..deploy.loading import load_model
    from ..deploy.quantize import (
        model_metadata,
        quantize_onnx,
        quantize_ptq,
        quantize_qat,
        quantized_engine,
        recorded_grids,
        save_quantized,
    )
    from ..export.onnx import export_onnx
    from ..preprocessing import Preprocessing
    from ..runtimes.onnxruntime import session as onnx_session
    from ..weights import weights_info
    from ..zoo import VARIANTS

    backend = args.backend or ("onnxruntime" if args.output.endswith(".onnx") else "torch")
    if args.num_calib < 1:
        raise ValueError(f"--num-calib must be >= 1, got {args.num_calib}")
    if args.qat and (args.train is None or args.epochs < 1):
        raise ValueError("--qat needs --train DATA and --epochs >= 1")
    if args.qat and backend != "torch":
        raise ValueError("--qat is implemented for the torch backend (write a .pt file)")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    model = load_model(args.weights)
    classes = weights_info(model).classes
    if args.weights in VARIANTS and not Path(args.weights).exists():
        print(f"note: {args.weights} has random weights; accuracy numbers are meaningless, timings are not")
    pre = weights_info(model).preprocessing or Preprocessing.imagenet(model.config.resolution)
    calib, _ = load_images(args.calib, pre, limit=args.num_calib)
    example = calib[:1]
    ranges, grids = ({}, {}) if args.calibrated_ranges else recorded_grids(model)
    if ranges or grids:
        print(f"using the source's recorded quantization: {len(ranges)} activation ranges, {len(grids)} weight grids "
              "(--calibrated-ranges to calibrate instead)")

    with tempfile.TemporaryDirectory() as tmp:
        if backend == "torch":
            if args.qat:
                q = quantize_qat(model, _train_batches(args, model, pre), epochs=args.epochs, lr=args.lr,
                                 engine=args.engine, progress=True)
            else:
                q = quantize_ptq(model, calib, engine=args.engine, observer=args.observer,
                                 use_recorded=not args.calibrated_ranges, progress=True)
            path = save_quantized(q, args.output, example, metadata=model_metadata(model))

            def int8(x: torch.Tensor) -> torch.Tensor:
                with quantized_engine(args.engine), torch.inference_mode():
                    return q(x)
        else:
            float_onnx = export_onnx(model, Path(tmp) / "float.onnx", resolution=calib.shape[-1])
            path = quantize_onnx(float_onnx, args.output, calib, activation_ranges=ranges, weight_grids=grids)
            sess = onnx_session(path, threads=args.threads or torch.get_num_threads())
            name = sess.get_inputs()[0].name

            def int8(x: torch.Tensor) -> torch.Tensor:
                return torch.from_numpy(sess.run(None, {name: x.numpy()})[0])

        def fp32(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return model(x)

        if args.eval:
            xs, ys = load_labelled(args.eval, pre, num_classes=model.num_classes, class_names=classes,
                                   limit=args.num_eval)
        else:
            xs, ys = calib, None
        ref = torch.cat([fp32(b) for b in xs.split(32)])
        out = torch.cat([int8(b) for b in xs.split(1 if backend == "torch" else 32)])
        with num_threads(args.threads):
            times = time_interleaved({"fp32": lambda: fp32(example), "int8": lambda: int8(example)},
                                     repeats=args.repeats, warmup=3, min_sample_s=0.02)
    import statistics

    float_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    report = {
        "backend": backend, "engine": args.engine if backend == "torch" else "onnxruntime", "qat": args.qat,
        "output": str(path), "calibration_images": len(calib),
        "size_mb": {"fp32_state_dict": float_bytes / 1e6, "int8_file": os.path.getsize(path) / 1e6},
        "latency_ms": {k: statistics.median(v) * 1e3 for k, v in times.items()},
        "threads": args.threads or torch.get_num_threads(),
        "top1_agreement": (out.argmax(1) == ref.argmax(1)).float().mean().item() * 100, "images": len(xs),
    }
    report["speedup"] = report["latency_ms"]["fp32"] / report["latency_ms"]["int8"]
    if ys is not None:
        report["top1"] = {"fp32": (ref.argmax(1) == ys).float().mean().item() * 100,
                          "int8": (out.argmax(1) == ys).float().mean().item() * 100}
    print(f"wrote {path}")
    print(f"{'':<22}{'fp32':>10}{'int8':>10}")
    print(f"{'size (MB)':<22}{report['size_mb']['fp32_state_dict']:>10.2f}{report['size_mb']['int8_file']:>10.2f}")
    print(f"{'latency b=1 (ms)':<22}{report['latency_ms']['fp32']:>10.2f}{report['latency_ms']['int8']:>10.2f}"
          f"   ({report['speedup']:.2f}x, {report['threads']} threads, interleaved blocks, median of {args.repeats})")
    if "top1" in report:
        print(f"{'top-1 (%)':<22}{report['top1']['fp32']:>10.2f}{report['top1']['int8']:>10.2f}"
              f"   ({len(xs)} images from {args.eval})")
    print(f"top-1 agreement int8 vs fp32: {report['top1_agreement']:.1f}% of {len(xs)} images")
    if args.json:
        with atomic_write(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0
