"""`mobilenet demo`: the main job on bundled data, offline, in minutes on a laptop CPU.

Today: profile the 16 named variants (the TF-slim grid table, published numbers beside ours), run a
forward pass of every named variant in both presets and check the output shapes, then train a
MobileNet on the bundled handwritten digits (``configs/digits.toml``), evaluate it on the held-out
test split, predict a few test images, and save the run (weights, metrics, curves) under ``--out``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .flags import non_negative_int, positive_int
from .paths import check_output_dir

NAME = "demo"
HELP = "run the main job on the bundled default data (what `make demo` runs)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="folder for the demo's outputs")
    p.add_argument("--train-epochs", type=positive_int, default=None,
                   help="epochs of the digits training step (default: configs/digits.toml's)")
    p.add_argument("--train-threads", type=non_negative_int, default=1,
                   help="CPU threads for the digits training step (0: torch's default). 1 by default: this "
                        "tiny model gains little from a second thread, and on a busy machine intra-op "
                        "threads that wait on each other made it >10x slower")


# The training step's recipe; configs/digits.toml holds the same values (a test keeps them equal).
DIGITS_RECIPE = dict(
    width_mult=0.25, resolution=32, stem_stride=1, preset="paper", data="digits#train", val_data="digits#test",
    augment="none", normalization="imagenet", crop_fraction=1.0, workers=0, optimizer="sgd", lr=0.1, momentum=0.9,
    nesterov=True, weight_decay=5e-4, schedule="cosine", warmup_epochs=1.0, epochs=10, batch_size=64,
)


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


def train_digits(out: Path, epochs: int | None = None) -> dict:
    """Train on the bundled digits; print one line per epoch; return the training's ``end`` event."""
    from ..engine.classify import train
    from ..recipe import TrainConfig

    cfg = TrainConfig(**{**DIGITS_RECIPE, "out": str(out), "tensorboard": False,
                         **({"epochs": epochs} if epochs else {})})
    end: dict = {}
    for ev in train(cfg):
        if ev["event"] == "start":
            print(f"training MobileNet v1 alpha {cfg.width_mult} ({ev['params']:,} parameters, small-image stem) on "
                  f"the bundled digits: {ev['train_size']} train / {ev['val_size']} test images, 32x32, "
                  f"{cfg.epochs} epochs on {ev['device']}")
        elif ev["event"] == "epoch":
            print(f"  epoch {ev['epoch']:>2}: train loss {ev['train_loss']:.3f} acc {ev['train_acc']:5.1f}% | "
                  f"test top-1 {ev['val_top1']:5.1f}% | {ev['img_per_s']:.0f} img/s, {ev['epoch_seconds']:.1f} s")
        elif ev["event"] == "end":
            end = ev
    return end


def evaluate_and_predict(weights: Path, out: Path, n_samples: int = 5) -> dict:
    """Score ``weights`` on the digits test split and predict a few of its images saved as PNGs."""
    import torch

    from ..checkpoint import load
    from ..data import eval_transform, open_image_dataset
    from ..evaluate import evaluate
    from ..predict import model_preprocessing, predict

    model = load(weights)
    test = open_image_dataset("digits#test", transform=eval_transform(model_preprocessing(model)))
    res = evaluate(model, torch.utils.data.DataLoader(test, batch_size=128), class_names=model.weights_info.classes,
                   dataset_classes=test.class_names)
    print(f"evaluation of {weights} on digits#test: top-1 {res['top1']:.2f}%, top-5 {res['top5']:.2f}%, "
          f"loss {res['loss']:.4f} over {res['count']} images")
    samples = out / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    raw = open_image_dataset("digits#test")
    step = max(len(raw) // n_samples, 1)
    paths = []
    for i in range(0, step * n_samples, step):
        image, label = raw[i]
        paths.append(samples / f"test{i:03d}_label{raw.class_names[label]}.png")
        image.save(paths[-1])
    print(f"predictions for {len(paths)} test images saved in {samples}:")
    for r in predict(model, paths, topk=2):
        tops = ", ".join(f"{t['label']} ({100 * t['prob']:.1f}%)" for t in r["top"])
        print(f"  {Path(r['path']).name}: {tops}")
    return res


def run(args: argparse.Namespace) -> int:
    check_output_dir(args.out)  # before the minutes of profiling and training
    profile_every_variant()
    forward_every_variant()
    import torch

    out = Path(args.out)
    threads = torch.get_num_threads()
    if args.train_threads > 0:
        torch.set_num_threads(args.train_threads)
    try:
        t0 = time.perf_counter()
        end = train_digits(out / "digits", args.train_epochs)
        # The test split only monitored training; the reported number is the last epoch's weights,
        # not a best epoch picked on the test set.
        res = evaluate_and_predict(Path(end["last"]), out)
    finally:
        torch.set_num_threads(threads)
    print(f"digits: test top-1 {res['top1']:.2f}% ({res['count']} held-out images) after "
          f"{time.perf_counter() - t0:.0f} s of training and evaluation; run saved in {end['run_dir']} "
          "(last.safetensors, metrics.jsonl, curves.png)")
    return 0
