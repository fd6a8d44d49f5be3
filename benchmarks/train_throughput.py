"""Training throughput (images/s) on ImageNet shapes, ours beside timm's ``mobilenetv1_100``.

Synthetic data (random inputs/labels already on the device), one training step = forward,
cross-entropy, backward, SGD (Nesterov) step, under the same settings for every model: input
resolution, batch, autocast dtype, memory format. Timing: warm-up steps first, then ``--repeats``
timed windows of ``--steps`` steps each (CUDA-synchronised), median reported. timm is measured
only when it is importable (install it with ``pip install --no-deps timm`` so it cannot pull
another torch); otherwise its row says so.

    python benchmarks/train_throughput.py                                   # H100: 224, bf16, batch 256
    python benchmarks/train_throughput.py --compile                         # adds compiled rows
    python benchmarks/train_throughput.py --device cpu --batch-size 8 --resolution 96 --steps 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="bf16")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--compile", action="store_true", help="also measure torch.compile'd models")
    p.add_argument("--device", default="auto")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps before measuring")
    p.add_argument("--steps", type=int, default=20, help="steps per timed window")
    p.add_argument("--repeats", type=int, default=5, help="timed windows (median reported)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--json", help="also write the JSON report to this file")
    return p.parse_args(argv)


def models(compile_too: bool) -> list[tuple[str, Callable[[], nn.Module] | None, str, bool]]:
    """(name, builder or None when unavailable, note, compiled)."""
    from mobilenet.model import MobileNetV1

    rows: list[tuple[str, Callable[[], nn.Module] | None, str, bool]] = [
        ("mobilenet (ours)", lambda: MobileNetV1(width_mult=1.0, num_classes=1000), "", False)]
    try:
        import timm

        rows.append(("timm mobilenetv1_100", lambda: timm.create_model("mobilenetv1_100", num_classes=1000),
                     f"timm {timm.__version__}", False))
    except ImportError as e:  # timm missing, or installed without torchvision (which it imports)
        rows.append(("timm mobilenetv1_100", None, f"timm unavailable ({e}); pip install --no-deps timm "
                     "needs a matching torchvision", False))
    if compile_too:
        rows += [(f"{name} + compile", build, note, True) for name, build, note, _ in list(rows)]
    return rows


def measure(build: Callable[[], nn.Module], compiled: bool, args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = build().to(device).to(memory_format=fmt).train()
    net = torch.compile(model) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=4e-5)
    x = torch.randn(args.batch_size, 3, args.resolution, args.resolution, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (args.batch_size,), device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        step()
    sync()
    rates = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync()
        rates.append(args.batch_size * args.steps / (time.perf_counter() - t0))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"img_per_s": statistics.median(rates), "min": min(rates), "max": max(rates),
            "params": sum(p.numel() for p in model.parameters()), "peak_mem_gib": peak}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mobilenet.distributed import resolve_device

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cpu" and args.amp == "fp16":
        raise SystemExit("--amp fp16 needs CUDA; use bf16 or none on CPU")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "threads": torch.get_num_threads(), "batch_size": args.batch_size,
           "resolution": args.resolution, "amp": args.amp, "channels_last": args.channels_last,
           "warmup": args.warmup, "steps": args.steps, "repeats": args.repeats}
    results = []
    for name, build, note, compiled in models(args.compile):
        row = {"model": name, "compiled": compiled, "note": note}
        if build is not None:
            row.update(measure(build, compiled, args, device))
            print(f"  {name:<30} {row['img_per_s']:10.1f} img/s", file=sys.stderr, flush=True)
        results.append(row)
    base = next((r.get("img_per_s") for r in results if r["model"] == "timm mobilenetv1_100"), None)
    for r in results:
        r["vs_timm_eager"] = r["img_per_s"] / base if base and "img_per_s" in r else None
    print(f"training throughput on {env['device']}: batch {args.batch_size}, {args.resolution}x{args.resolution}, "
          f"{args.amp}, channels_last={args.channels_last}, {env['threads']} threads, median of {args.repeats} x "
          f"{args.steps} steps")
    print("| model | img/s (median) | min | max | x timm eager | params | note |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        if "img_per_s" not in r:
            print(f"| {r['model']} | - | - | - | - | - | {r['note']} |")
            continue
        vs = f"{r['vs_timm_eager']:.2f}" if r["vs_timm_eager"] else "-"
        print(f"| {r['model']} | {r['img_per_s']:.1f} | {r['min']:.1f} | {r['max']:.1f} | {vs} | "
              f"{r['params']:,} | {r['note']} |")
    report = {"benchmark": "train_throughput", "env": env, "results": results}
    print(json.dumps(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
