"""`mobilenet profile`: parameters, BN statistics, MACs and activation memory of a model, per layer or
for the whole α x resolution grid, with the published numbers beside ours."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .flags import int_at_least, non_negative_int, positive_float, positive_int

NAME = "profile"
HELP = "count parameters, BN statistics, MACs and activation memory (per layer, grid, paper tables)"
DESCRIPTION = """\
Count the exact cost of a MobileNet v1 by running a shape-only (meta) copy of the real model.

examples:
  mobilenet profile                                  # mobilenet_v1_100_224, paper preset: totals
  mobilenet profile mobilenet_v1_050_160 --per-layer # every conv / BN / pool / FC layer
  mobilenet profile --width-mult 0.6 --resolution 200 --preset tf --num-classes 1001
  mobilenet profile --grid --compare --format markdown   # the 16 variants beside TF-slim's table
  mobilenet profile --paper                          # the paper's Tables 1, 2, 4-7 beside ours
"""

DTYPES = ("float32", "float16", "bfloat16", "int8", "uint8")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="a named variant, e.g. mobilenet_v1_075_160 (`mobilenet models`)")
    g = p.add_argument_group("model (override the named variant, or build one)")
    g.add_argument("--width-mult", type=positive_float, help="width multiplier alpha (> 0)")
    g.add_argument("--resolution", type=int_at_least(32), help="input size in pixels (>= 32)")
    g.add_argument("--num-classes", type=non_negative_int, help="classifier outputs (slim: 1001); 0: no classifier")
    g.add_argument("--preset", choices=("paper", "tf", "timm"),
                   help="paper (ReLU, Linear head), tf (slim/Keras) or timm (ReLU6, symmetric padding)")
    g.add_argument("--conv-type", choices=("separable", "full"), help="full: Table 4's Conv MobileNet")
    g.add_argument("--shallow", action="store_true", default=None, help="Table 5's shallow MobileNet")
    g.add_argument("--stem-stride", type=int, choices=(1, 2), help="1 keeps resolution for small images")
    g.add_argument("--in-chans", type=positive_int, help="input channels (default 3)")
    o = p.add_argument_group("what to print")
    o.add_argument("--per-layer", action="store_true", help="one row per conv / BN / pool / FC layer")
    o.add_argument("--grid", action="store_true",
                   help="all 16 variants, in TF-slim's convention (tf preset, 1001 classes) unless overridden")
    o.add_argument("--paper", action="store_true", help="the paper's Tables 1, 2 and 4-7 beside our counts")
    o.add_argument("--compare", action="store_true", help="published numbers beside ours")
    o.add_argument("--params", choices=("weights", "learnable", "total", "slim"), default=None,
                   help="which parameters the grid's params column sums (default: slim with --grid)")
    o.add_argument("--batch", type=positive_int, default=1, help="batch size for MACs and activations (default 1)")
    o.add_argument("--dtype", choices=DTYPES, default="float32", help="bytes per activation (default float32)")
    o.add_argument("--format", choices=("table", "markdown", "csv", "json"), default="table")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    flags = {"width_mult": args.width_mult, "resolution": args.resolution, "num_classes": args.num_classes,
             "preset": args.preset, "conv_type": args.conv_type, "shallow": args.shallow,
             "stem_stride": args.stem_stride, "in_chans": args.in_chans}
    return {k: v for k, v in flags.items() if v is not None}


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import profile as prof
    from .flags import CLIError

    dtype = getattr(torch, args.dtype)
    overrides = _overrides(args)
    if args.grid and args.paper:
        raise CLIError("choose one of --grid and --paper")
    if args.paper:
        if args.name or overrides:
            raise CLIError("--paper profiles the paper's own models; drop the model name and flags")
        tables = prof.paper_tables(batch=args.batch)
        if args.format == "json":
            print(json.dumps([json.loads(t.render("json")) for t in tables], indent=2))
        else:
            print("\n\n".join(t.render(args.format) for t in tables))
        return 0

    if args.grid:
        if args.name or "width_mult" in overrides or "resolution" in overrides:
            raise CLIError("--grid profiles the 16 named variants; drop the model name, --width-mult and --resolution")
        grid_overrides = {**prof.CONVENTIONS["slim"].overrides, **overrides}
        profiles = prof.profile_grid(batch=args.batch, dtype=dtype, **grid_overrides)
        params = args.params or "slim"
        if args.format == "json":
            print(json.dumps(_grid_json(profiles, params, args.compare, args.per_layer), indent=2))
        else:
            print(prof.grid_table(profiles, compare=args.compare, params=params).render(args.format))
        return 0

    if args.name:
        profile = prof.profile_variant(args.name, batch=args.batch, dtype=dtype, **overrides)
    else:
        from ..model import MobileNetConfig

        profile = prof.profile_config(MobileNetConfig(**overrides), batch=args.batch, dtype=dtype)
    if args.format == "json":
        d = profile.to_dict()
        if args.compare:
            d["published"] = json.loads(prof.compare_table(profile).render("json"))["rows"]
        print(json.dumps(d, indent=2))
        return 0
    table = prof.layers_table(profile) if args.per_layer else prof.summary_table(profile)
    out = [table.render(args.format)]
    if args.compare:
        out.append(prof.compare_table(profile).render(args.format))
    print("\n\n".join(out))
    return 0


def _grid_json(profiles: list[Any], params: str, compare: bool, layers: bool) -> dict[str, Any]:
    from dataclasses import asdict

    from ..profile import grid_table
    from ..published import SLIM, SLIM_V1

    models = []
    for p in profiles:
        d = p.to_dict(layers=layers)
        if compare and p.name in SLIM_V1:
            d["published"] = {"source": SLIM, **asdict(SLIM_V1[p.name])}
        models.append(d)
    return {"caption": grid_table(profiles, params=params).caption, "params_count": params, "models": models}
