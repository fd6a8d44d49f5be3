"""Ours vs timm's ``mobilenetv1_100`` on one CUDA GPU, in the same run: throughput, latency, correctness.

    python benchmarks/gpu_vs_timm.py                      # batch 256 fp16+bf16 throughput, batch-1 latency
    python benchmarks/gpu_vs_timm.py --no-compile --iters 50 --out gpu.json

Measures (MobileNet v1 1.0-224, random weights: speed does not depend on them):

* large-batch inference throughput (img/s) at ``--batch-size`` in fp16 and bf16, channels_last, for
  eager and ``torch.compile`` (mode ``max-autotune-no-cudagraphs``), ours (BN folded, static graph)
  and timm's model side by side; the ratio ours/timm;
* batch-1 latency (ms) with CUDA graphs (a captured static-shape replay) for both, and compiled;
* correctness of every fast path of ours against the fp32 eager reference on the same input
  (max |diff| relative to max |ref| and top-1 agreement; fp16/bf16 tolerance).

Timing: CUDA events around ``--iters`` calls after ``--warmup`` calls, the models interleaved
round-robin over ``--rounds`` rounds; median over rounds. Needs CUDA and ``timm`` (pip install timm,
without letting it replace the CUDA torch). Prints JSON and a table.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from collections.abc import Callable

import torch

from mobilenet import create_model
from mobilenet.deploy.bench import _cuda_graph, render_table
from mobilenet.deploy.fold import fold_bn
from mobilenet.deploy.static import static_model

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
TOLERANCE = {"fp16": 2e-2, "bf16": 6e-2}  # max |diff| / max |ref| allowed vs the fp32 reference


def _time(fns: dict[str, Callable[[], object]], *, iters: int, warmup: int, rounds: int) -> dict[str, float]:
    """Median seconds per call of each function; CUDA events, functions interleaved per round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    torch.cuda.synchronize()
    per_call: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        names = list(fns)[r % len(fns):] + list(fns)[:r % len(fns)]
        for name in names:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fns[name]()
            end.record()
            torch.cuda.synchronize()
            per_call[name].append(start.elapsed_time(end) / 1e3 / iters)
    return {k: statistics.median(v) for k, v in per_call.items()}


def _no_grad(fn, x):
    def call():
        with torch.no_grad():
            return fn(x)
    return call


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dtypes", default="fp16,bf16")
    p.add_argument("--iters", type=int, default=20, help="calls per timed round")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--out", default=None, help="write the JSON result here too")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_vs_timm: no CUDA device; nothing measured", file=sys.stderr)
        return 2
    try:
        import timm
    except ImportError:
        print("gpu_vs_timm: needs timm (pip install timm --no-deps) for the peer model", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    dev, cl = torch.device("cuda"), torch.channels_last
    torch.manual_seed(0)
    ours = create_model("mobilenet_v1_100_224").eval()
    peer = timm.create_model("mobilenetv1_100", pretrained=False).eval()
    result: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "timm": timm.__version__,
                    "batch_size": args.batch_size, "throughput": {}, "latency_ms": {}, "correctness": {}}
    x32 = torch.randn(args.batch_size, 3, 224, 224, device=dev)
    with torch.no_grad():
        ref = ours.to(dev)(x32).float()
    ours_fast = static_model(fold_bn(ours.cpu()))
    rows = []
    for dname in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        dt = DTYPES[dname]
        x = x32.to(dt).contiguous(memory_format=cl)
        a = copy.deepcopy(ours_fast).to(dev, dt).to(memory_format=cl)
        b = copy.deepcopy(peer).to(dev, dt).to(memory_format=cl)
        fns = {f"ours eager {dname}": _no_grad(a, x), f"timm eager {dname}": _no_grad(b, x)}
        if not args.no_compile:
            fns[f"ours compile {dname}"] = _no_grad(torch.compile(a, mode="max-autotune-no-cudagraphs"), x)
            fns[f"timm compile {dname}"] = _no_grad(torch.compile(b, mode="max-autotune-no-cudagraphs"), x)
        for name, fn in fns.items():  # correctness of our fast paths vs the fp32 reference
            if name.startswith("ours"):
                out = fn().float()
                rel = ((out - ref).abs().max() / ref.abs().max()).item()
                agree = (out.argmax(1) == ref.argmax(1)).float().mean().item()
                result["correctness"][name] = {"max_rel_diff": rel, "top1_agreement": agree,
                                               "ok": rel <= TOLERANCE[dname]}
        secs = _time(fns, iters=args.iters, warmup=args.warmup, rounds=args.rounds)
        for name, s in secs.items():
            result["throughput"][name] = args.batch_size / s
        for mode in ("eager",) + (() if args.no_compile else ("compile",)):
            o, t = result["throughput"][f"ours {mode} {dname}"], result["throughput"][f"timm {mode} {dname}"]
            rows.append([f"batch {args.batch_size} {mode} {dname}", f"{o:,.0f} img/s", f"{t:,.0f} img/s",
                         f"{o / t:.2f}x"])
    # batch-1 latency: CUDA graphs of both, fp16 channels_last
    x1 = torch.randn(1, 3, 224, 224, device=dev, dtype=torch.float16).contiguous(memory_format=cl)
    a1 = copy.deepcopy(ours_fast).to(dev, torch.float16).to(memory_format=cl)
    b1 = copy.deepcopy(peer).to(dev, torch.float16).to(memory_format=cl)
    lat = {"ours eager fp16": _no_grad(a1, x1), "timm eager fp16": _no_grad(b1, x1),
           "ours cuda-graphs fp16": _cuda_graph(a1, x1), "timm cuda-graphs fp16": _cuda_graph(b1, x1)}
    with torch.no_grad():
        ref1 = ours.to(dev)(x1.float()).float()
    out1 = lat["ours cuda-graphs fp16"]().float()
    rel1 = ((out1 - ref1).abs().max() / ref1.abs().max()).item()
    result["correctness"]["ours cuda-graphs fp16 (batch 1)"] = {"max_rel_diff": rel1, "ok": rel1 <= TOLERANCE["fp16"]}
    secs = _time(lat, iters=max(args.iters, 100), warmup=args.warmup, rounds=args.rounds)
    for name, s in secs.items():
        result["latency_ms"][name] = s * 1e3
    for mode in ("eager", "cuda-graphs"):
        o, t = result["latency_ms"][f"ours {mode} fp16"], result["latency_ms"][f"timm {mode} fp16"]
        rows.append([f"batch 1 latency {mode} fp16", f"{o:.3f} ms", f"{t:.3f} ms", f"{t / o:.2f}x"])
    print(json.dumps(result, indent=2))
    print()
    print(f"{result['device']}, torch {result['torch']}, timm {result['timm']} (same run, interleaved)")
    print(render_table(("measure", "ours", "timm mobilenetv1_100", "ours vs timm"), rows, "markdown"))
    bad = [k for k, v in result["correctness"].items() if not v["ok"]]
    print("correctness: " + ("all fast paths within tolerance" if not bad else f"OUT OF TOLERANCE: {bad}"))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
