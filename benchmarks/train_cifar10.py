"""CIFAR-10 test accuracy against wall-clock time, two MobileNet v1 settings side by side.

GPU path: the whole set is decoded once into a uint8 tensor on the device, then every batch is
augmented there (pad-4 random crop + flip, optional cutout) and normalised: no DataLoader, no
per-image Python work. Settings:

* ``alpha1_stem1``: MobileNet v1 alpha 1.0 with a small-image stem (first conv at stride 1), the
  target run (>= 93% test accuracy in <= 10 minutes on one H100).
* ``keras_alpha05``: the seed's Keras example setting, alpha 0.5, 32x32 input, plain stem (stride 2),
  trained with Nadam (lr 0.002, Keras's) as that example is.

Both train with the product's own trainer (``mobilenet.engine.classify.train``, the engine behind
``mobilenet train``) on its on-device data path (``device_data``): the same loop, schedules, AMP,
checkpoints and validation as every other run, each setting's run folder under ``--out``. The clock
covers training, the per-epoch test evaluation and the engine's per-epoch state saves, not the one-off
decode (reported separately). Prints a table and JSON; saves accuracy-vs-time curves.

    python benchmarks/train_cifar10.py --data ../shared/data/cifar10                      # GPU, full
    python benchmarks/train_cifar10.py --data ../shared/data/cifar10 --device cpu --epochs 1 \\
        --max-train 512 --max-test 256 --batch-size 64 --amp none --settings keras_alpha05  # CPU smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

SETTINGS = {
    "alpha1_stem1": dict(width_mult=1.0, stem_stride=1),
    "keras_alpha05": dict(width_mult=0.5, stem_stride=2),
}
# The optimizer of each setting: SGD (Nesterov, --lr) for ours; Nadam as the seed's Keras example trains, at
# Keras's Nadam rate (0.002), under the same warm-up and cosine schedule.
OPTIMIZERS = {"alpha1_stem1": ("sgd", None), "keras_alpha05": ("nadam", 0.002)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/cifar10", help="folder with train.zip/test.zip, or the "
                   "official cifar-10-python.tar.gz")
    p.add_argument("--settings", default="alpha1_stem1,keras_alpha05", help="comma-separated: " + ", ".join(SETTINGS))
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=0.4, help="peak SGD lr (Nesterov, momentum 0.9)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--warmup-epochs", type=float, default=2.0)
    p.add_argument("--cutout", type=int, default=8, help="cutout square size (0: off)")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="bf16")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--device", default="auto")
    p.add_argument("--target", type=float, default=93.0, help="test top-1 (%%) whose time-to-reach is reported")
    p.add_argument("--budget-min", type=float, default=10.0, help="stop a setting after this many minutes")
    p.add_argument("--max-train", type=int, default=0, help="use only the first N training images (smoke runs)")
    p.add_argument("--max-test", type=int, default=0, help="use only the first N test images (smoke runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench_cifar10", help="folder for JSON and curves")
    return p.parse_args(argv)


def load_split(data: str, split: str, device: torch.device, limit: int) -> Any:
    """The split decoded once into uint8 (N, 3, 32, 32) images and labels on ``device`` (a DecodedImages)."""
    from mobilenet.data import DecodedImages, SubsetView, load_tensor_dataset, open_image_dataset

    ds = open_image_dataset(f"cifar10:{data}#{split}", check="none")
    if limit:  # a spread of classes, not the first folder only
        step = max(len(ds) // limit, 1)
        ds = SubsetView(ds, list(range(0, len(ds), step))[:limit])
    d = load_tensor_dataset(ds, progress=sys.stderr.isatty())
    return DecodedImages(d.images.to(device), d.labels.to(device), d.class_names, d.skipped)


def run_setting(name: str, args: argparse.Namespace, train: Any, test: Any, device: torch.device) -> dict:
    from mobilenet.engine.classify import train as train_run
    from mobilenet.recipe import TrainConfig

    opt_name, opt_lr = OPTIMIZERS[name]
    base_lr = opt_lr or args.lr
    if len(train.labels) < args.batch_size:
        raise SystemExit(f"--batch-size {args.batch_size} is larger than the {len(train.labels)} training images")
    cfg = TrainConfig(
        resolution=32, **SETTINGS[name], device_data=True, augment="cifar", cutout=args.cutout, crop_fraction=1.0,
        normalization="imagenet", optimizer=opt_name, lr=base_lr, momentum=0.9, nesterov=True,
        weight_decay=args.weight_decay, schedule="cosine", warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing, amp=args.amp, channels_last=args.channels_last, compile=args.compile,
        device=str(device), epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, workers=0,
        out=str(Path(args.out) / name), keep_last=1, tensorboard=False, curves=False,
        log_every_steps=1_000_000_000)  # read the loss back at epoch ends only: no host sync inside an epoch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    curve, reached, params, t0 = [], None, 0, 0.0
    events = train_run(cfg, train_set=train, val_set=test)
    try:
        for ev in events:
            if ev["event"] == "start":
                params = ev["params"]
                sync()
                t0 = time.perf_counter()
            elif ev["event"] == "epoch":
                sync()
                seconds = time.perf_counter() - t0
                curve.append({"epoch": ev["epoch"], "seconds": seconds, "train_loss": ev["train_loss"],
                              "test_top1": ev["val_top1"], "test_loss": ev["val_loss"]})
                print(f"  [{name}] epoch {ev['epoch']:>3}/{args.epochs}: {seconds:7.1f} s  train loss "
                      f"{curve[-1]['train_loss']:.3f}  test top-1 {ev['val_top1']:.2f}%", flush=True)
                if reached is None and ev["val_top1"] >= args.target:
                    reached = seconds
                if seconds > args.budget_min * 60:
                    print(f"  [{name}] stopped: {args.budget_min} min budget spent", flush=True)
                    break
    finally:
        events.close()  # a stop on the budget ends the run here (no further saves)
    return {
        "setting": name, **SETTINGS[name], "optimizer": opt_name, "lr": base_lr, "params": params,
        "epochs_run": len(curve), "final_top1": curve[-1]["test_top1"], "best_top1": max(c["test_top1"] for c in curve),
        "seconds": curve[-1]["seconds"], "seconds_to_target": reached, "target": args.target, "curve": curve,
    }


def plot(results: list[dict], path: Path, target: float) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in results:
        ax.plot([c["seconds"] / 60 for c in r["curve"]], [c["test_top1"] for c in r["curve"]], marker="o", ms=3,
                label=f"{r['setting']} (alpha {r['width_mult']}, stem stride {r['stem_stride']})")
    ax.axhline(target, color="grey", ls="--", lw=1, label=f"target {target}%")
    ax.set(xlabel="wall-clock minutes (training + per-epoch test)", ylabel="CIFAR-10 test top-1 (%)",
           title="MobileNet v1 on CIFAR-10")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mobilenet.distributed import resolve_device

    device = resolve_device(args.device)
    names = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown setting(s) {unknown}; known: {', '.join(SETTINGS)}")
    if device.type == "cpu" and args.amp == "fp16":
        raise SystemExit("--amp fp16 needs CUDA; use bf16 or none on CPU")
    t = time.perf_counter()
    train = load_split(args.data, "train", device, args.max_train)
    test = load_split(args.data, "test", device, args.max_test)
    decode_s = time.perf_counter() - t
    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "threads": torch.get_num_threads(), "amp": args.amp,
           "channels_last": args.channels_last, "compile": args.compile, "batch_size": args.batch_size,
           "epochs": args.epochs, "train_images": len(train.labels), "test_images": len(test.labels),
           "decode_seconds": decode_s}
    print(f"CIFAR-10 on {env['device']}: {env['train_images']} train / {env['test_images']} test images decoded "
          f"to {device} in {decode_s:.1f} s; {args.amp}, channels_last={args.channels_last}, batch {args.batch_size}")
    results = [run_setting(n, args, train, test, device) for n in names]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    curves = plot(results, out / "cifar10_accuracy_vs_time.png", args.target)
    report = {"benchmark": "train_cifar10", "env": env, "results": results,
              "curves": str(curves) if curves else None}
    (out / "train_cifar10.json").write_text(json.dumps(report, indent=2))
    print()
    print(f"| setting | alpha | stem stride | params | epochs | final top-1 % | best top-1 % | minutes | "
          f"minutes to {args.target}% |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        to = f"{r['seconds_to_target'] / 60:.1f}" if r["seconds_to_target"] is not None else "not reached"
        print(f"| {r['setting']} | {r['width_mult']} | {r['stem_stride']} | {r['params']:,} | {r['epochs_run']} | "
              f"{r['final_top1']:.2f} | {r['best_top1']:.2f} | {r['seconds'] / 60:.1f} | {to} |")
    print(json.dumps({k: v for k, v in report.items() if k != "results"} | {
        "results": [{k: v for k, v in r.items() if k != "curve"} for r in results]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
