"""`mobilenet demo`: the main job on bundled data, offline, in minutes on a laptop CPU.

Today: profile the 16 named variants (the TF-slim grid table, published numbers beside ours), then
run a forward pass of every named variant in both presets and check the output shapes.
"""

from __future__ import annotations

import argparse
import time

NAME = "demo"
HELP = "run the main job on the bundled default data (what `make demo` runs)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="folder for the demo's outputs")


def profile_every_variant() -> None:
    """Print the 16-variant cost table in TF-slim's convention, with slim's published columns."""
    from ..profile import CONVENTIONS, grid_table, profile_grid

    profiles = profile_grid(**CONVENTIONS["slim"].overrides)
    print(grid_table(profiles, compare=True).render("table"))
    print()


def forward_every_variant() -> None:
    import torch

    from ..zoo import create_model, list_models

    print(f"forward pass of every variant (batch 1, CPU, {torch.get_num_threads()} threads):")
    torch.manual_seed(0)
    for name in list_models():
        for preset in ("paper", "tf"):
            model = create_model(name, preset=preset).eval()
            r = model.config.resolution
            x = torch.randn(1, 3, r, r)
            with torch.inference_mode():
                t0 = time.perf_counter()
                y = model(x)
                ms = (time.perf_counter() - t0) * 1e3
            assert y.shape == (1, model.num_classes) and torch.isfinite(y).all()
            print(f"  {name:<22} {preset:<5} input {tuple(x.shape)} -> logits {tuple(y.shape)}  {ms:7.1f} ms")


def run(args: argparse.Namespace) -> int:
    profile_every_variant()
    forward_every_variant()
    return 0
