"""`mobilenet bench`: the time table (device x pass x variant), or with --grid latency vs accuracy of 16 variants."""

from __future__ import annotations

import argparse

from .. import strict_json

NAME = "bench"
HELP = "time every deployment path on this machine; --grid: latency/accuracy of the 16 variants and budgets"
DESCRIPTION = """Time table of one model: device (cpu, cuda) x pass (forward, forward-backward) x variant
(eager, folded, channels_last, compile, int8, a row per runtime: onnxruntime, openvino, tflite, executorch, fp32
and int8; fp16/bf16, CUDA graphs), timed interleaved in one run.

  mobilenet bench mobilenet_v1_100_224 --format markdown
  mobilenet bench w.safetensors --peers             # beside OpenVINO's defaults on our ONNX, timm, TF Lite
  mobilenet bench w.safetensors --recommend --calib images/   # the fastest path here that keeps accuracy
  mobilenet bench model.tflite                      # a deployed file in its own runtime
  mobilenet bench --grid --plot grid.png            # 16 variants: latency beside MACs and TF-slim top-1
  mobilenet bench --grid --budget-ms 5              # the most accurate variant that runs in 5 ms here"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .flags import choices_csv, non_negative_int, positive_float, positive_int

    p.add_argument("model", nargs="?", default="mobilenet_v1_100_224",
                   help="model name (random weights), weights file, or a deployed file (.onnx, .tflite, .pte, .xml, "
                        ".pt, .pt2) timed in its own runtime (default: mobilenet_v1_100_224)")
    p.add_argument("--preset", choices=("paper", "tf", "timm"), default=None, help="preset for a model name")
    p.add_argument("--batch-size", type=positive_int, default=1)
    p.add_argument("--device", type=choices_csv(("cpu", "cuda")), default=["cpu", "cuda"],
                   help="cpu,cuda (default both)")
    p.add_argument("--pass", dest="passes", type=choices_csv(("forward", "forward-backward")),
                   default=["forward", "forward-backward"], help="forward,forward-backward (default both)")
    # checked by run_bench (naming the known ones): importing them here would load torch for `--help`
    p.add_argument("--variants", type=choices_csv(None), default=None, help="comma-separated subset of variants")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile rows (slow to compile on small CPUs)")
    p.add_argument("--repeats", type=positive_int, default=50, help="timed calls per variant")
    p.add_argument("--warmup", type=non_negative_int, default=5, help="untimed calls per variant first")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--peers", action="store_true",
                   help="add what a user runs without us: OpenVINO's defaults on our ONNX, timm, TF Lite on "
                        "--peer-tflite")
    p.add_argument("--peer-tflite", metavar="FILE", default=None, help="Google's .tflite of this variant (peer row)")
    p.add_argument("--recommend", action="store_true",
                   help="choose the fastest CPU path that keeps accuracy (int8/bf16 only when faster and within 1 "
                        "point top-1 of float on held-out --calib images); see `export --target cpu`")
    p.add_argument("--calib", default=None,
                   help="--recommend: images (folder or dataset), half calibrate, half are held out")
    p.add_argument("--num-calib", type=positive_int, default=200, help="--recommend: images to read from --calib")
    p.add_argument("--format", choices=("table", "markdown", "json"), default="table")
    p.add_argument("--out", default=None, help="also write the JSON result here")
    g = p.add_argument_group("grid: latency vs accuracy of the 16 alpha x resolution variants (CPU)")
    g.add_argument("--grid", action="store_true", help="time all 16 variants instead of one model")
    # checked by run_grid (naming the known ones), as --variants
    g.add_argument("--grid-variant", default="eager",
                   help="deployment path timed for every variant (default eager fp32)")
    g.add_argument("--plot", default=None, help="write the latency/top-1 plot with the Pareto frontier (PNG)")
    g.add_argument("--budget-ms", type=positive_float, default=None, help="latency budget (ms per batch, median)")
    g.add_argument("--budget-macs", type=positive_float, default=None, help="budget in million multiply-adds per image")
    g.add_argument("--budget-params", type=positive_float, default=None, help="budget in million parameters")


def _grid(args: argparse.Namespace) -> int:
    from ..checkpoint import atomic_write
    from ..deploy.grid import format_grid, pick_for_budget, plot_grid, run_grid
    rows = run_grid(variant=args.grid_variant, batch_size=args.batch_size, repeats=args.repeats,
                    warmup=args.warmup, preset=args.preset or "tf")
    budgets = {"budget_ms": args.budget_ms, "budget_macs": args.budget_macs, "budget_params": args.budget_params}
    pick = pick_for_budget(rows, **budgets) if any(v is not None for v in budgets.values()) else None
    payload = {"variant": args.grid_variant, "batch_size": args.batch_size, "rows": [r.to_dict() for r in rows],
               "budgets": budgets, "pick": pick.name if pick else None}
    if args.format == "json":
        print(strict_json.dumps(payload, indent=2))
    else:
        print(f"{args.grid_variant} latency at batch {args.batch_size} on this CPU, the 16 variants timed "
              f"interleaved; top-1 is TF-slim's published ImageNet accuracy; * = Pareto frontier\n")
        print(format_grid(rows, args.format))
    if any(v is not None for v in budgets.values()):
        given = ", ".join(f"{k[7:]} <= {v:g}" for k, v in budgets.items() if v is not None)
        if pick is None:
            print(f"\nno variant fits the budget ({given})")
        else:
            print(f"\nmost accurate within {given}: {pick.name} (top-1 {pick.top1:.1f}%, {pick.median_ms:.2f} ms, "
                  f"{pick.macs_m:.0f}M MACs, {pick.params_m:.2f}M params)")
    if args.plot:
        title = f"MobileNet v1 on this CPU ({args.grid_variant}, batch {args.batch_size})"
        print(f"plot: {plot_grid(rows, args.plot, title=title)}")
    if args.out:
        with atomic_write(args.out, "w") as f:
            strict_json.dump(payload, f, indent=2)
    return 0


def _recommend(args: argparse.Namespace, model: object) -> int:
    from ..checkpoint import atomic_write
    from ..deploy.target import format_recommendation, recommend_cpu, target_images
    images, labels = target_images(model, args.calib, limit=args.num_calib)  # type: ignore[arg-type]
    rec = recommend_cpu(model, images, labels, batch=args.batch_size, repeats=args.repeats,  # type: ignore[arg-type]
                        warmup=args.warmup, paths=args.variants)
    print(format_recommendation(rec, args.format))
    if args.out:
        with atomic_write(args.out, "w") as f:
            f.write(format_recommendation(rec, "json"))
    return 0


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import atomic_write
    from ..deploy.bench import bench_file, format_result, num_threads, run_bench
    from ..deploy.loading import load_model
    from ..runtimes import is_artifact
    from .paths import check_output_file

    for flag, path in (("--out", args.out), ("--plot", args.plot)):  # before minutes of timing
        if path:
            check_output_file(path, flag=flag, inputs=[args.model, args.calib, args.peer_tflite])
    grid_only = [n for n in ("plot", "budget_ms", "budget_macs", "budget_params") if getattr(args, n) is not None]
    if grid_only and not args.grid:
        raise ValueError(f"--{grid_only[0].replace('_', '-')} needs --grid")
    if args.recommend != (args.calib is not None):
        raise ValueError("--recommend needs --calib (images: half calibrate the int8 paths, half are held out)"
                         if args.recommend else "--calib is for --recommend")
    if args.peer_tflite and not args.peers:
        raise ValueError("--peer-tflite needs --peers")
    if not args.grid and "cpu" not in args.device:
        import torch

        if not torch.cuda.is_available():  # nothing would be timed: an empty table is no answer
            raise ValueError("--device cuda: CUDA is not available here (--device cpu times this machine's CPU)")
    with num_threads(args.threads):
        if args.grid:
            return _grid(args)
        if is_artifact(args.model):
            result = bench_file(args.model, batch_size=args.batch_size, repeats=args.repeats, warmup=args.warmup)
        else:
            model = load_model(args.model, preset=args.preset)
            if args.recommend:
                return _recommend(args, model)
            result = run_bench(model, batch_size=args.batch_size, devices=args.device, passes=args.passes,
                               variants=args.variants, compile=not args.no_compile, repeats=args.repeats,
                               warmup=args.warmup, peers=args.peers, google_tflite=args.peer_tflite)
    print(format_result(result, args.format))
    if args.out:
        with atomic_write(args.out, "w") as f:
            strict_json.dump(result.to_dict(), f, indent=2)
    return 0
