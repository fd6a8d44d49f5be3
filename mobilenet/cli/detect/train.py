"""`mobilenet detect train`: train or fine-tune an SSD on the training engine (flags generated from DetectConfig)."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from ...recipe import DetectConfig, add_config_flags
    from ..flags import add_threads_flag

    t = sub.add_parser("train", help="train or fine-tune an SSD",
                       description="Train or fine-tune an SSD. Settings: defaults, then a TOML recipe (--config, e.g. "
                       "configs/ssd_voc.toml, whose keys are these flags' names; --loss is `classification`), then "
                       "the flags given. --print-config shows every value.")
    t.add_argument("--config", metavar="TOML", help="recipe file (configs/ssd_*.toml); flags override its keys")
    t.add_argument("--print-config", action="store_true", help="print the resolved settings as JSON and exit")
    t.add_argument("--quiet", action="store_true", help="no progress bar, only one line per epoch")
    add_threads_flag(t)
    add_config_flags(t, DetectConfig, flags={"classification": "--loss"})
    return t


def run(args: argparse.Namespace) -> int:
    from ...distributed import barrier, setup, teardown
    from ...engine.detect import train_detector
    from ...recipe import DetectConfig, overrides_from_args, resolve
    from .._progress import follow
    from ..paths import check_output_dir

    cfg = resolve(args.config, overrides_from_args(args, DetectConfig), DetectConfig, defaults={"workers": 2})
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    for key in ("data", "out"):
        if getattr(cfg, key) is None:
            raise ValueError(f"--{key} is required (or {key} = ... in the --config recipe)")
    check_output_dir(cfg.out, inputs=[cfg.data])  # not inside the dataset it reads
    info = setup(cfg.device)
    try:
        code = follow(train_detector(cfg, info=info), show=info.is_main, quiet=args.quiet, out=str(cfg.out))
        barrier()  # ranks leave together (see `mobilenet train`)
    finally:
        teardown()
    return code
