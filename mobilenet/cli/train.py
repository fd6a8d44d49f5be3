"""`mobilenet train`: train or fine-tune a MobileNet from a TOML recipe and/or flags.

Examples::

    mobilenet train --config configs/digits.toml
    mobilenet train --config configs/cifar10.toml --data cifar10:../shared/data/cifar10#train \\
        --val-data cifar10:../shared/data/cifar10#test --out runs/c10 --epochs 30
    mobilenet train --config configs/cifar10.toml --out runs/c10 --resume auto      # after a kill
    torchrun --nproc-per-node 2 -m mobilenet train --config configs/digits.toml       # DDP (gloo on CPU)
"""

from __future__ import annotations

import argparse
import json

NAME = "train"
HELP = "train or fine-tune on an image folder, archive, CIFAR-10 or the bundled digits (resumable, DDP-ready)"
DESCRIPTION = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..recipe import add_config_flags
    from .flags import add_threads_flag

    p.add_argument("--config", metavar="TOML", help="recipe file (configs/*.toml); flags override its keys")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar, only one line per epoch")
    add_threads_flag(p)  # default: the idle cores (the busy 2-core machine: 1 thread trained 10x faster than 2)
    add_config_flags(p)


def run(args: argparse.Namespace) -> int:
    from ..distributed import barrier, setup, teardown
    from ..engine.classify import train
    from ..recipe import overrides_from_args, resolve
    from ._progress import follow
    from .paths import check_output_dir

    cfg = resolve(args.config, overrides_from_args(args))
    if args.print_config:
        from ..engine.classify import resolved_settings

        print(json.dumps(resolved_settings(cfg), indent=2))
        return 0
    if cfg.out:  # a run folder inside the data would be read back as a class folder (curves.png an image)
        check_output_dir(cfg.out, inputs=[cfg.data, cfg.val_data])
    info = setup(cfg.device)
    try:
        code = follow(train(cfg, info=info), show=info.is_main, quiet=args.quiet, out=str(cfg.out))
        # Ranks leave together: a rank that destroys the gloo group while rank 0 is still saving can abort
        # ("terminate called without an active exception"). Not after an error, where a barrier could hang.
        barrier()
    finally:
        teardown()
    return code
