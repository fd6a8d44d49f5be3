"""What the training engine costs over a bare loop: the same model, data and steps, timed side by side.

Both train a MobileNet v1 on one synthetic uint8 set held on the device (``--images`` random 32x32
images, 10 classes), batches augmented there (CIFAR's pad-4 crop + flip, cutout 8) with SGD + Nesterov,
a cosine schedule, label smoothing and ``--amp``:

* ``bare``: the loop ``benchmarks/train_cifar10.py`` ran before it used the engine, written out here;
* ``engine``: ``mobilenet.engine.classify.train`` with ``device_data`` (what ``train_cifar10.py`` runs now), timed
  by its own ``epoch_seconds`` (the training steps of an epoch; its state save after each epoch is not included).

The first epoch is warm-up (allocator, cuDNN autotuning); the table reports the median of the others.
Accuracy is meaningless here (random labels): this measures time only.

    python benchmarks/engine_overhead.py --device cuda --epochs 4               # GPU
    python benchmarks/engine_overhead.py --device cpu --images 2048 --batch-size 128 --amp none --width-mult 0.25
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mobilenet.data import DecodedImages, cutout, normalize_batch, random_crop_flip  # noqa: E402
from mobilenet.distributed import resolve_device  # noqa: E402
from mobilenet.engine.classify import train  # noqa: E402
from mobilenet.model import MobileNetV1  # noqa: E402
from mobilenet.optim import build_optimizer, lr_multiplier  # noqa: E402
from mobilenet.preprocessing import Preprocessing  # noqa: E402
from mobilenet.recipe import TrainConfig  # noqa: E402


def synthetic(n: int, device: torch.device, seed: int = 0) -> DecodedImages:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return DecodedImages(images.to(device), labels.to(device), [str(i) for i in range(10)])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare(args: argparse.Namespace, data: DecodedImages, device: torch.device) -> list[float]:
    torch.manual_seed(0)
    pre = Preprocessing(resolution=32, crop_fraction=1.0)
    model = MobileNetV1(resolution=32, num_classes=10, width_mult=args.width_mult, stem_stride=args.stem_stride)
    model = model.to(device, memory_format=torch.channels_last)
    opt = build_optimizer(model, "sgd", lr=0.4, weight_decay=5e-4, nesterov=True)
    steps = len(data.labels) // args.batch_size
    sched = lr_multiplier("cosine", steps_per_epoch=steps, total_epochs=args.epochs, warmup_epochs=1)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    gen = torch.Generator(device=device).manual_seed(0)
    seconds, step = [], 0
    for _ in range(args.epochs):
        sync(device)
        t = time.perf_counter()
        model.train()
        order = torch.randperm(len(data.labels), device=device, generator=gen)
        for k in range(steps):
            idx = order[k * args.batch_size:(k + 1) * args.batch_size]
            xb = cutout(random_crop_flip(data.images[idx], 4, generator=gen), 8, generator=gen)
            xb = normalize_batch(xb, pre, channels_last=True)
            for g in opt.param_groups:
                g["lr"] = 0.4 * sched(step)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = F.cross_entropy(model(xb), data.labels[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        float(loss)
        sync(device)
        seconds.append(time.perf_counter() - t)
    return seconds


def engine(args: argparse.Namespace, data: DecodedImages, device: torch.device) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(resolution=32, width_mult=args.width_mult, stem_stride=args.stem_stride, device_data=True,
                          augment="cifar", cutout=8, crop_fraction=1.0, optimizer="sgd", lr=0.4, nesterov=True,
                          weight_decay=5e-4, schedule="cosine", warmup_epochs=1, label_smoothing=0.1, amp=args.amp,
                          channels_last=True, device=str(device), epochs=args.epochs, batch_size=args.batch_size,
                          workers=0, out=tmp, keep_last=1, tensorboard=False, curves=False, eval_every=0,
                          log_every_steps=1_000_000_000)
        return [ev["epoch_seconds"] for ev in train(cfg, train_set=data) if ev["event"] == "epoch"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--stem-stride", type=int, default=1)
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="bf16")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    device = resolve_device(args.device)
    data = synthetic(args.images, device)
    rows = {"bare": bare(args, data, device), "engine": engine(args, data, device)}
    steady = {k: statistics.median(v[1:] or v) for k, v in rows.items()}
    images = len(data.labels) // args.batch_size * args.batch_size
    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
           "amp": args.amp, "batch_size": args.batch_size, "images": args.images, "width_mult": args.width_mult,
           "stem_stride": args.stem_stride, "epochs": args.epochs}
    print("| loop | median epoch s (after the first) | img/s | vs bare |\n|---|---|---|---|")
    for k, s in steady.items():
        print(f"| {k} | {s:.2f} | {images / s:,.0f} | {steady['bare'] / s:.2f}x |")
    report = {"benchmark": "engine_overhead", "env": env, "epoch_seconds": rows, "median_seconds": steady}
    print(json.dumps(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
