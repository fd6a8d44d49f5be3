"""`mobilenet export`: a classifier or detector to ONNX, TorchScript, torch.export, TF Lite, ExecuTorch, OpenVINO
or Core ML.

The exported file is then run in its own runtime against PyTorch (max |difference| of the outputs, top-1
agreement) unless --no-check; Core ML cannot run on Linux, so its package is inspected instead (inputs,
outputs, class labels, ops). Examples::

    mobilenet export w.safetensors -o w.tflite --format tflite --layout NHWC
    mobilenet export w.safetensors -o w_int8.pte --format executorch-int8 --calib ../shared/data/imagenet/images
    mobilenet export w.safetensors -o w.xml --format openvino
    mobilenet export detector.safetensors -o ssd.tflite --format tflite
    mobilenet export w.safetensors --target cpu --calib images/ -o deploy/   # the fastest path on this CPU

``--target cpu`` measures every deployment path on this machine and writes the fastest one that keeps the
accuracy (int8 or bf16 only when faster than float and within 1 point top-1 on the held-out half of --calib),
with ``target.json`` (every candidate's time and accuracy, and why) beside it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

NAME = "export"
HELP = "export to ONNX, TorchScript, torch.export, TF Lite, ExecuTorch, OpenVINO or Core ML (float or int8)"
DESCRIPTION = __doc__
# mobilenet.export.FORMATS, not imported: that package loads torch, and `mobilenet --help` must not (a test keeps
# the two equal)
FORMATS = ("onnx", "onnx-int8", "torchscript", "torch-export", "tflite", "tflite-int8", "executorch",
           "executorch-int8", "openvino", "openvino-int8", "coreml")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .flags import int_at_least, positive_int

    p.add_argument("weights", help="weights file (classifier or SSD; or a .tflite to import), or a model name "
                                   "(random weights)")
    p.add_argument("-o", "--output", required=True,
                   help="file to write (its suffix must match the format); a folder with --target")
    p.add_argument("--format", choices=FORMATS, default=None, help="the format to write (default: onnx)")
    p.add_argument("--target", choices=("cpu",), default=None,
                   help="measure the paths on this machine and write the fastest that keeps accuracy (needs --calib)")
    p.add_argument("--paths", default=None, metavar="A,B",
                   help="--target: the deployment paths to measure (default: all that build in seconds; see "
                        "`mobilenet bench --help`)")
    p.add_argument("--resolution", type=int_at_least(32), default=None, help="input size (default: the model's)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (>= 17; default 18)")
    p.add_argument("--layout", choices=("NCHW", "NHWC"), default="NCHW", help="TF Lite input layout")
    p.add_argument("--batch", type=positive_int, default=1, help="fixed batch size of a TF Lite or ExecuTorch file")
    p.add_argument("--method", choices=("nncf", "qdq"), default=None,
                   help="openvino-int8: our int8 QDQ ONNX converted (a classifier's default) or NNCF on the float "
                        "IR (a detector's default)")
    p.add_argument("--scheme", choices=("per-channel", "per-tensor"), default="per-channel",
                   help="tflite-int8 when calibrated: int8 kernels per channel (TF Lite's scheme), or per-tensor uint8 "
                        "(Google's 2018 files, the Edge TPU's); a quantized import keeps its own")
    p.add_argument("--precision", choices=("float16", "float32"), default="float16",
                   help="Core ML compute precision (float16 runs on the Neural Engine)")
    p.add_argument("--calib", default=None, help="calibration images for *-int8 (folder or dataset)")
    p.add_argument("--num-calib", type=positive_int, default=100, help="calibration images to use")
    p.add_argument("--threads", type=positive_int, default=None, help="threads of the check run")
    p.add_argument("--no-check", action="store_true", help="skip running the exported file against PyTorch")


def _load(spec: str) -> Any:
    """A classifier (weights file, model name, or a classifier .tflite imported) or a detector (SSD weights file,
    or a detection .tflite imported)."""
    from ..checkpoint import read_metadata
    from ..deploy.loading import load_model

    if spec.lower().endswith(".tflite") and Path(spec).is_file():
        from ..tflite.ssd import is_detection_tflite

        if is_detection_tflite(spec):
            from ..engine.detect import load_detector

            return load_detector(spec)
        from ..convert import import_model

        return import_model(spec, "tflite")
    if Path(spec).is_file() and read_metadata(spec).get("architecture") == "ssd_mobilenet_v1":
        from ..engine.detect import load_detector

        return load_detector(spec)
    return load_model(spec)


def _target(args: argparse.Namespace) -> int:
    from ..deploy.loading import load_model
    from ..deploy.target import format_recommendation, recommend_cpu, target_images, write_choice
    from .paths import check_output_dir

    if args.format is not None:
        raise ValueError("--target chooses the format: give --target or --format, not both")
    if args.calib is None:
        raise ValueError("--target cpu needs --calib (images: half calibrate the int8 paths, half are held out)")
    if Path(args.output).suffix:
        raise ValueError(f"--target writes into a folder (the format is chosen by measuring): not {args.output}")
    check_output_dir(args.output, flag="-o", inputs=[args.calib])
    model = load_model(args.weights)
    images, labels = target_images(model, args.calib, limit=args.num_calib)
    paths = [p.strip() for p in args.paths.split(",") if p.strip()] if args.paths else None
    rec = recommend_cpu(model, images, labels, batch=args.batch, threads=args.threads, paths=paths)
    print(format_recommendation(rec))
    written = write_choice(rec, model, args.output)
    print(f"wrote {written} and {Path(args.output) / 'target.json'}")
    return 0


def _print_coreml(path: Any) -> None:
    from ..export.coreml import inspect_coreml

    info = inspect_coreml(path)
    ins = ", ".join(f"{f['name']} {f.get('color', '')} {f['width']}x{f['height']}" if "width" in f else
                    f"{f['name']} {f.get('shape')}" for f in info["inputs"])
    print(f"Core ML {info['type']} (spec {info['spec_version']}): inputs {ins}; outputs "
          f"{', '.join(f['name'] for f in info['outputs'])}; {len(info['class_labels'])} class labels; "
          f"ops {', '.join(info['ops'])}")
    print("not run: Core ML predicts only on Apple platforms; this package was converted and inspected on "
          "Linux, not executed")


def run(args: argparse.Namespace) -> int:
    from ..deploy.calibration import load_images
    from ..export import INT8, RECORDED_GRIDS, SUFFIXES, artifact_metadata, check, export, file_size
    from ..export.metadata import input_size, is_detector
    from ..preprocessing import Preprocessing
    from .paths import check_output_file

    if args.target:
        return _target(args)
    if args.paths:
        raise ValueError("--paths is for --target")
    args.format = args.format or "onnx"
    if Path(args.output).suffix != SUFFIXES[args.format]:  # refused before the (slow) load and calibration
        raise ValueError(f"--format {args.format} writes a {SUFFIXES[args.format]} file, not {Path(args.output).name}")
    check_output_file(args.output, inputs=[args.weights, args.calib])
    if args.opset is not None:  # checked in run (tests call main() and expect its exit code), before any work
        import onnx

        top = onnx.defs.onnx_opset_version()  # above it torch.onnx warns and writes its own default instead
        if not 17 <= args.opset <= top:
            raise ValueError(f"--opset must be in 17..{top} (the installed onnx {onnx.__version__}), got {args.opset}")
    if args.calib is not None and args.format not in INT8:
        raise ValueError(f"--calib is for the int8 formats, not {args.format}")
    if args.format in INT8 and args.calib is None and args.format not in RECORDED_GRIDS:
        raise ValueError(f"--format {args.format} needs --calib (a folder of images or a dataset)")
    model = _load(args.weights)
    size = input_size(model, args.resolution)
    calibration = None
    if args.calib is not None:
        pre = Preprocessing.from_dict(artifact_metadata(model, size=size)["preprocessing"])
        calibration, _ = load_images(args.calib, pre, limit=args.num_calib)
    detector_onnx = is_detector(model) and args.format.startswith("onnx")
    if detector_onnx:  # ends in the model's own post-processing (NMS as ONNX ops): the detection layer's export
        from ..detection.export import export_detector_int8, export_detector_onnx
        from ..weights import weights_info

        options = {"image_size": size, "opset": args.opset or 18, "class_names": weights_info(model).classes}
        path = (export_detector_int8(model, args.output, calibration, **options) if calibration is not None else
                export_detector_onnx(model, args.output, **options))
    else:
        path = export(model, args.output, format=args.format, resolution=args.resolution, calibration=calibration,
                      opset=args.opset, layout=args.layout, batch=args.batch, method=args.method,
                      precision=args.precision, scheme=args.scheme)
    print(f"wrote {path} ({file_size(path) / 1e6:.2f} MB, {args.format}, input {size[0]}x{size[1]})")
    if args.format == "coreml":
        _print_coreml(path)
        return 0
    if detector_onnx:
        print("ends in detections (N, 7) after the model's NMS; `mobilenet detect eval --weights` the file to score it "
              "(`mobilenet detect export` has the post-processing options)")
        return 0
    if is_detector(model) and args.format == "tflite-int8":
        print("ends in TFLite_Detection_PostProcess (boxes, classes, scores, count); `mobilenet detect eval --weights` "
              "the file to score it")
        return 0
    if args.no_check:
        return 0
    # OpenVINO computes in bf16 by default on CPUs that have it: the file is checked in f32, the default is named.
    options = {"precision": "f32"} if args.format.startswith("openvino") else {}
    result = check(path, model, threads=args.threads, **options)
    agree = "" if result.top1_agreement is None else f", top-1 agreement {result.top1_agreement:.0%}"
    print(f"check in {result.description}: max abs difference to PyTorch {result.max_abs_diff:.2e} on "
          f"{result.inputs} random inputs{agree}")
    if options:
        from ..runtimes.openvino import default_precision

        print(f"(OpenVINO's own default precision on this CPU is {default_precision()}; `mobilenet eval` of the file "
              "measures its accuracy there)")
    return 0
