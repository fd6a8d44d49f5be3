"""`mobilenet fold`: fold BatchNorm into the convolutions and write the folded weights file."""

from __future__ import annotations

import argparse

NAME = "fold"
HELP = "fold BatchNorm into the preceding convolutions (same outputs, fewer ops)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("weights", help="weights file (.safetensors) to fold")
    p.add_argument("-o", "--output", required=True, help="folded weights file to write (.safetensors)")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..deploy.fold import fold_bn, save_folded
    from ..deploy.loading import load_model
    from .paths import check_output_file

    check_output_file(args.output, suffixes=(".safetensors",), what="folded weights", inputs=[args.weights])
    model = load_model(args.weights)
    if getattr(model, "bn_folded", False):
        raise ValueError(f"{args.weights} is already folded")
    folded = fold_bn(model)
    r = model.config.resolution
    x = torch.randn(4, model.config.in_chans, r, r, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref, out = model(x), folded(x)
    rel = ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()
    path = save_folded(folded, args.output)
    print(f"folded {args.weights} -> {path}: max relative difference {rel:.2e} on 4 random inputs")
    return 0
