"""`mobilenet models`: list the named variants and their configuration."""

from __future__ import annotations

import argparse
import json

NAME = "models"
HELP = "list the named variants (alpha x resolution grid)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="glob filter, e.g. 'mobilenet_v1_050_*'")
    p.add_argument("--format", choices=("table", "json"), default="table")


def run(args: argparse.Namespace) -> int:
    from ..zoo import VARIANTS, list_models

    names = list_models(args.pattern)
    if not names:
        from .flags import CLIError

        raise CLIError(f"no named variant matches {args.pattern!r} (the names are mobilenet_v1_<alpha x 100>_<"
                       "resolution>, e.g. mobilenet_v1_050_160; `mobilenet models` lists all)")
    if args.format == "json":
        print(json.dumps({n: VARIANTS[n] for n in names}, indent=2))
    else:
        print(f"{'name':<24}{'width_mult':>11}{'resolution':>11}")
        for n in names:
            print(f"{n:<24}{VARIANTS[n]['width_mult']:>11}{VARIANTS[n]['resolution']:>11}")
    return 0
