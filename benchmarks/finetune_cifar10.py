"""Fine-tuning from the published ImageNet weights against training from scratch, on a small real dataset.

The dataset is made from the shared CIFAR-10 zips: a few classes, a few hundred images (the JPEG files copied
as they are, into ``<out>/data/{train,test}/<class>/``). The pretrained runs start from the shared Keras file
(α = 0.25, 224 px, no classifier) and the shared TF Lite file (α = 0.25, 128 px, uint8), each converted with
``mobilenet convert``, and train with ``configs/finetune.toml`` and default flags: the architecture, resolution
and preprocessing come from the weights. The scratch runs train the same architectures from random weights with
``configs/finetune.toml`` plus the from-scratch settings in ``SCRATCH`` (no frozen warm-up, a higher lr).
Every command is printed before it runs, so each row can be reproduced alone::

    python benchmarks/finetune_cifar10.py --data ../shared/data --out runs/finetune_cifar10 --epochs 10

Prints a markdown table of validation top-1 after the first and the last epoch (``--json FILE`` writes the rows
too). Nothing is written outside ``--out`` unless ``--json`` names a file. Accuracy, not speed: the runs use one
thread each (``--threads``), and their times depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "finetune.toml"
KERAS = ("weights", "keras", "mobilenet_2_5_224_tf_no_top.h5")
TFLITE = ("weights", "tflite", "mobilenet_v1_0.25_128_quant.tflite")
# From random weights nothing is worth freezing, and a fine-tuning lr is too low to train a network anew.
SCRATCH = ("--freeze-backbone-epochs", "0", "--head-lr-mult", "1", "--lr", "0.1", "--warmup-epochs", "1")


def make_subset(cifar: Path, out: Path, classes: list[str], per_class: dict[str, int]) -> dict[str, int]:
    """Copy the first ``per_class[split]`` images (sorted names) of each class from ``cifar/{split}.zip`` into
    ``out/{split}/<class>/``; returns the image count per split. Files already there are kept."""
    counts = {}
    for split, n in per_class.items():
        with zipfile.ZipFile(cifar / f"{split}.zip") as z:
            names = z.namelist()
            for c in classes:
                members = sorted(m for m in names if m.startswith(f"{split}/{c}/") and m.endswith(".jpg"))
                if len(members) < n:
                    raise SystemExit(f"{cifar / f'{split}.zip'}: class {c!r} has {len(members)} images, {n} asked")
                folder = out / split / c
                folder.mkdir(parents=True, exist_ok=True)
                for m in members[:n]:
                    target = folder / Path(m).name
                    if not target.is_file():
                        target.write_bytes(z.read(m))
        counts[split] = n * len(classes)
    return counts


def run(cmd: list[str], threads: int) -> float:
    """Run a command (printed first, as one copyable line) on ``threads`` threads; returns its wall time in s."""
    print("$ " + shlex.join(cmd), flush=True)
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, cwd=REPO, env=env)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {shlex.join(cmd)}")
    return time.perf_counter() - start


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                    help="the shared data folder (cifar10/*.zip, weights/)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "finetune_cifar10")
    ap.add_argument("--classes", default="bird,cat,dog", help="comma-separated CIFAR-10 classes")
    ap.add_argument("--train-per-class", type=int, default=100)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", default="keras,tflite,scratch_224,scratch_128",
                    help="which rows: keras, tflite, scratch_224, scratch_128")
    ap.add_argument("--extra", default="", help="more `mobilenet train` flags for every run, e.g. '--normalization tf'")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    args = ap.parse_args()

    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    data = args.out / "data"
    counts = make_subset(args.data / "cifar10", data, classes,
                         {"train": args.train_per_class, "test": args.test_per_class})
    print(f"dataset: {', '.join(classes)}; {counts['train']} training and {counts['test']} test images in {data}")
    mobilenet = [sys.executable, "-m", "mobilenet"]
    common = ["--config", str(RECIPE), "--data", str(data / "train"), "--val-data", str(data / "test"),
              "--epochs", str(args.epochs), "--quiet"]
    help_text = subprocess.run([*mobilenet, "train", "--help"], capture_output=True, text=True, cwd=REPO).stdout
    if "--threads" in help_text:  # else OMP_NUM_THREADS (set for every command) sets them
        common += ["--threads", str(args.threads)]
    weights = {"keras": args.out / "keras_025_224.safetensors", "tflite": args.out / "tflite_025_128.safetensors"}
    rows_wanted = [r.strip() for r in args.runs.split(",") if r.strip()]
    for name, parts in (("keras", KERAS), ("tflite", TFLITE)):
        if name in rows_wanted and not weights[name].is_file():
            run([*mobilenet, "convert", str(args.data.joinpath(*parts)), "--out", str(weights[name])], args.threads)
    plans = {
        "keras": ("Keras α=0.25 224 px (no top)", ["--weights", str(weights["keras"])]),
        "tflite": ("TF Lite α=0.25 128 px uint8", ["--weights", str(weights["tflite"])]),
        "scratch_224": ("from scratch, α=0.25 224 px (tf preset)",
                        ["--model", "mobilenet_v1_025_224", "--preset", "tf", "--normalization", "tf", *SCRATCH]),
        "scratch_128": ("from scratch, α=0.25 128 px (tf preset)",
                        ["--model", "mobilenet_v1_025_128", "--preset", "tf", "--normalization", "tf", *SCRATCH]),
    }
    rows = []
    for key in rows_wanted:
        if key not in plans:
            raise SystemExit(f"unknown run {key!r}; choose from {', '.join(plans)}")
        label, extra = plans[key]
        run_dir = args.out / "runs" / key
        cmd = [*mobilenet, "train", *common, *extra, *shlex.split(args.extra), "--out", str(run_dir)]
        seconds = run(cmd, args.threads)
        history = [r for r in read_metrics(run_dir) if "val_top1" in r]
        rows.append({"run": key, "start": label, "epochs": history[-1]["epoch"],
                     "top1_first": history[0]["val_top1"], "top1_last": history[-1]["val_top1"],
                     "top1_best": max(r["val_top1"] for r in history), "seconds": round(seconds, 1),
                     "command": shlex.join(["mobilenet", *cmd[3:]])})
    print(f"\n{', '.join(classes)}: {counts['train']} training / {counts['test']} test images from CIFAR-10 "
          f"(32x32, upscaled to each model's resolution); validation top-1 %\n")
    print(f"| start | epochs | after epoch 1 | after epoch {args.epochs} | best |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['start']} | {r['epochs']} | {r['top1_first']:.1f} | {r['top1_last']:.1f} | {r['top1_best']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
