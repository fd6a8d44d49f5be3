"""`mobilenet export`: ONNX (float or int8 QDQ), TorchScript or a torch.export program."""

from __future__ import annotations

import argparse

NAME = "export"
HELP = "export to ONNX (float or int8), TorchScript or torch.export"
FORMATS = ("onnx", "onnx-int8", "torchscript", "torch-export")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("weights", help="weights file, or a model name (random weights)")
    p.add_argument("-o", "--output", required=True, help="file to write")
    p.add_argument("--format", choices=FORMATS, default="onnx")
    p.add_argument("--resolution", type=int, default=None, help="input size (default: the model's)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17)")
    p.add_argument("--calib", default=None, help="calibration images for onnx-int8 (folder or dataset)")
    p.add_argument("--num-calib", type=int, default=100, help="calibration images to use")
    p.add_argument("--no-check", action="store_true", help="skip running the exported file against PyTorch")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..deploy.export import export, onnx_session
    from ..deploy.loading import load_model
    from ..preprocessing import Preprocessing

    if args.opset < 17:
        raise ValueError(f"--opset must be >= 17, got {args.opset}")
    if args.resolution is not None and args.resolution < 32:
        raise ValueError(f"--resolution must be >= 32, got {args.resolution}")
    model = load_model(args.weights)
    r = args.resolution or model.config.resolution
    calibration = None
    if args.format == "onnx-int8":
        if args.calib is None:
            raise ValueError("--format onnx-int8 needs --calib (a folder of images or a dataset)")
        from ..deploy.calibration import load_images
        from ..weights import weights_info

        pre = weights_info(model).preprocessing
        pre = Preprocessing.from_dict({**pre.to_dict(), "resolution": r}) if pre else Preprocessing.imagenet(r)
        calibration, _ = load_images(args.calib, pre, limit=args.num_calib)
    path = export(model, args.output, format=args.format, resolution=r, calibration=calibration, opset=args.opset)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, {args.format}, input (batch, "
          f"{model.config.in_chans}, {r}, {r}))")
    if args.no_check:
        return 0
    x = torch.randn(2, model.config.in_chans, r, r, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = model(x)
    if args.format.startswith("onnx"):
        try:
            sess = onnx_session(path)
        except ImportError as e:
            print(f"not checked: {e}")
            return 0
        out = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    elif args.format == "torchscript":
        out = torch.jit.load(str(path))(x)
    else:
        out = torch.export.load(str(path)).module()(x)
    diff = (out - ref).abs().max().item()
    agree = (out.argmax(1) == ref.argmax(1)).float().mean().item()
    print(f"check vs PyTorch on 2 random inputs: max abs difference {diff:.2e}, top-1 agreement {agree:.0%}")
    return 0
