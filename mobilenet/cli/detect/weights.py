"""The detector a `detect` subcommand runs: what --weights may be, --device and --runtime, and loading it."""

from __future__ import annotations

import argparse
from typing import Any

WEIGHTS = ("detector weights (.safetensors; a detection .tflite, imported; or a deployed file run in its own runtime: "
           ".onnx, .pte, OpenVINO .xml, our .tflite exports)")
RUNTIME = "run --weights in this runtime (tflite: Google's detect.tflite in the interpreter instead of imported)"


def add_runtime_flags(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--runtime`` (the ``--weights`` flag itself is the subcommand's)."""
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--runtime", choices=("tflite", "openvino"), help=RUNTIME)


def load(args: argparse.Namespace) -> tuple[Any, Any]:
    """(detector, device) for ``args.weights``: ``--device auto`` is the CPU for a file another runtime runs (every
    deployed file but Google's detect.tflite, which is imported unless ``--runtime`` says otherwise)."""
    import torch

    from ...distributed import resolve_device
    from ...engine.detect import load_detector
    from ...runtimes import is_artifact
    from ...runtimes.tflite import read_metadata

    weights = str(args.weights)
    if args.runtime and not is_artifact(weights):  # it would run in PyTorch: say so rather than ignore the flag
        raise ValueError(f"--runtime {args.runtime} runs a deployed file (.onnx, .xml, .tflite); {weights} is a "
                         "weights file run in PyTorch: export it first (`mobilenet export`) or drop --runtime")
    imported = weights.lower().endswith(".tflite") and not args.runtime and not read_metadata(weights)[0]
    if args.device == "auto" and is_artifact(weights) and not imported:
        device = torch.device("cpu")
    else:
        device = resolve_device(args.device)
    return load_detector(args.weights, device, runtime=args.runtime, threads=torch.get_num_threads()), device
