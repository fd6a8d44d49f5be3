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
import signal
import sys

NAME = "train"
HELP = "train or fine-tune on an image folder, archive, CIFAR-10 or the bundled digits (resumable, DDP-ready)"
DESCRIPTION = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..recipe import add_config_flags

    p.add_argument("--config", metavar="TOML", help="recipe file (configs/*.toml); flags override its keys")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar, only one line per epoch")
    add_config_flags(p)


def _describe_start(ev: dict) -> str:
    resumed = f", resumed from {ev['resumed_from']} (epoch {ev['epoch'] + 1}, step {ev['step']})" \
        if ev["resumed_from"] else ""
    return (f"training {ev['params']:,} parameters on {ev['device']} x{ev['world_size']}: {ev['train_size']} train / "
            f"{ev['val_size']} val images, {ev['num_classes']} classes, {ev['epochs']} epochs of "
            f"{ev['steps_per_epoch']} steps (batch {ev['batch_size']}); weights: {ev['weights']}{resumed}")


def _describe_epoch(ev: dict) -> str:
    s = (f"epoch {ev['epoch']}: train loss {ev['train_loss']:.4f} acc {ev['train_acc']:.2f}%"
         f" | {ev['img_per_s']:.0f} img/s, {ev['epoch_seconds']:.1f} s")
    if "val_top1" in ev:
        s += f" | val loss {ev['val_loss']:.4f} top-1 {ev['val_top1']:.2f}% top-5 {ev['val_top5']:.2f}%"
    return s


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..distributed import barrier, setup, teardown
    from ..recipe import overrides_from_args, resolve
    from ..train import train

    cfg = resolve(args.config, overrides_from_args(args))
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    info = setup(cfg.device)
    show = info.is_main
    bar = None
    code = 0
    try:
        for ev in train(cfg, info=info):
            kind = ev["event"]
            if not show:
                continue
            if kind == "start":
                print(_describe_start(ev), flush=True)
            elif kind == "step" and not args.quiet:
                if bar is None:
                    bar = tqdm(total=ev["steps_per_epoch"], initial=ev["step"] - 1, desc=f"epoch {ev['epoch'] + 1}",
                               unit="step", dynamic_ncols=True, leave=False, file=sys.stderr)
                if ev["loss"] is not None:  # read back every log_every_steps steps
                    bar.set_postfix(loss=f"{ev['loss']:.3f}", acc=f"{ev['acc']:.1f}%", lr=f"{ev['lr']:.2e}",
                                    img_s=f"{ev['img_per_s']:.0f}", refresh=False)
                bar.update(1)
            elif kind == "epoch":
                if bar is not None:
                    bar.close()
                    bar = None
                print(_describe_epoch(ev), flush=True)
            elif kind == "interrupted":
                if bar is not None:
                    bar.close()
                name = signal.Signals(ev["signal"]).name
                print(f"{name}: training state saved to {ev['state']}; continue with --resume auto "
                      f"--out {cfg.out}", file=sys.stderr)
                code = 128 + int(ev["signal"])
            elif kind == "end":
                best = f", best validation top-1 {ev['best_top1']:.2f}%" if ev["best_top1"] is not None else ""
                print(f"done: {ev['global_step']} steps{best}; weights: {ev['best'] or ev['last']}; "
                      f"metrics: {ev['run_dir']}/metrics.jsonl" + (f"; curves: {ev['curves']}" if ev["curves"] else ""))
        # Ranks leave together: a rank that destroys the gloo group while rank 0 is still saving can abort
        # ("terminate called without an active exception"). Not after an error, where a barrier could hang.
        barrier()
    finally:
        if bar is not None:
            bar.close()
        teardown()
    return code
