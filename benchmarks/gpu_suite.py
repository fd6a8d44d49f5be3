"""The GPU suite: every GPU number the README states, measured in one call within a time budget.

    python benchmarks/gpu_suite.py --out runs/gpu_suite                 # a GPU machine: about 8 minutes
    python benchmarks/gpu_suite.py --dry-run --out runs/gpu_suite_dry   # CPU, tiny sizes: checks that it runs
    make gpu-suite

Sections, in order of value. Each runs in a process of its own (a crash or a hang in one cannot take the others
down) under its own time cap inside the overall budget (``--budget-min``); a section that no longer fits is
skipped and says so.

  inference  ours beside timm's ``mobilenetv1_100``, in the same process: images/s at batch 1, 32 and 256 in
             fp32, bf16 and fp16, eager and CUDA graphs; ours BN-folded, and with the fused Triton
             depthwise+pointwise blocks (mobilenet/kernels); torch.compile of both (bf16, batch 256 and 1).
             Every one of our paths is checked against the fp32 model (max relative difference, top-1 agreement).
  training   images/s of a training step (bf16 autocast, channels_last, batch 256, SGD): ours, ours with the
             Triton depthwise conv, timm; eager, then compiled where time allows.
  cifar10    benchmarks/train_cifar10.py on the CIFAR-10 zips (``--cifar-data``): test accuracy against time.
  detector   MobileNet-SSD 300x300 (alpha 0.75, 90 classes) at batch 1 and 32: eager fp32/bf16, CUDA graphs,
             the fused backbone.
  profile    the GPU kernels that take the time in timm's and our inference and training steps.
  bench      ``mobilenet bench --device cuda`` (the command's own table).

Timing: paths of one group are interleaved round by round (the order rotated each round), each sample a
CUDA-event-timed run of enough calls to last ~25 ms; the median is reported and every ratio comes with its
spread over the rounds. ``--dry-run`` runs every section on the CPU with tiny sizes (the fused kernels in
Triton's interpreter when Triton is installed): its numbers mean nothing; it exists so the suite cannot rot.

Output (``--out``): suite.json (all results, rewritten after every section), suite.md (the README tables),
suite.log (every section's output), cifar10.png (accuracy against time).

On the device machine (README "GPU"): ``python benchmarks/gpu_carry.py`` first packs the CIFAR-10 zips into the
git-ignored ``.gpu-data/cifar10`` so that they fit beside the working tree in one call (64 MiB); then, with
``.gpu-data`` carried, ``python3 benchmarks/gpu_suite.py --out $OUT --work /tmp/gpu_work --cifar-data
.gpu-data/cifar10`` (``--work`` outside ``$OUT``: only a few files come back from a call).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

# name -> (time cap in seconds on a GPU, what it measures)
SECTIONS: dict[str, tuple[float, str]] = {
    "inference": (170, "inference img/s, ours beside timm, eager/graphs/compiled/fused"),
    "blocks": (40, "each depthwise separable block: fused kernel vs cuDNN, against the memory roofline"),
    "training": (110, "training img/s, ours beside timm"),
    "cifar10": (190, "CIFAR-10 test accuracy against time"),
    "detector": (45, "MobileNet-SSD latency"),
    "profile": (40, "where the GPU time goes"),
    "bench": (60, "mobilenet bench --device cuda"),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TOLERANCE = {"fp32": 1e-2, "bf16": 6e-2, "fp16": 2e-2}  # max |diff| / max |ref| vs the fp32 model (fp32: TF32)


# ---------------------------------------------------------------------------------------------------- timing


def _device(dry_run: bool) -> torch.device:
    return torch.device("cpu") if dry_run else torch.device("cuda")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _seconds(fn: Callable[[], Any], iters: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` over ``iters`` back-to-back calls (CUDA events on a GPU)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / iters
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t) / iters


def interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, *, rounds: int, warmup: int = 3,
                sample_s: float = 0.025) -> dict[str, list[float]]:
    """Seconds per call of every function, one sample per round, the functions interleaved (order rotated)."""
    iters = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        _sync(device)
        if sample_s <= 0:  # one call per sample (the dry run): no need to time a call to size the samples
            iters[name] = 1
            continue
        once = _seconds(fn, 1, device)
        iters[name] = max(1, min(500, int(sample_s / max(once, 1e-6))))
    samples: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(_seconds(fns[name], iters[name], device))
    return samples


def ratio(samples: dict[str, list[float]], fast: str, slow: str) -> dict[str, float]:
    """How many times faster ``fast`` ran than ``slow``: median over rounds, with the min and max round."""
    rs = [s / f for f, s in zip(samples[fast], samples[slow], strict=True)]
    return {"median": statistics.median(rs), "min": min(rs), "max": max(rs)}


def cuda_graph(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> Callable[[], Any]:
    """A replay of one captured call of ``fn`` on a fixed input buffer (warmed up on a side stream first)."""
    static_x = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(3):
            fn(static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        out = fn(static_x)

    def replay() -> Any:
        graph.replay()
        return out
    replay.keep_alive = (static_x, stream)  # the graph reads this buffer at every replay: it must outlive the graph
    return replay


def no_grad_call(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> Callable[[], Any]:
    def call() -> Any:
        with torch.no_grad():
            return fn(x)
    return call


def add_path(fns: dict[str, Callable[[], Any]], errors: dict[str, str], name: str,
             make: Callable[..., Callable[[], Any]], *args: Any) -> None:
    """Add ``make(*args)`` as path ``name`` once one call of it has run; a path that fails (a kernel that does not
    compile on this GPU, a capture that fails) is left out and its error kept, so the other paths are measured."""
    try:
        fn = make(*args)
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # a fault shows here, named, not at some later path's first sync
    except Exception as e:  # noqa: BLE001  (any failure of one path must not cost the others)
        errors[name] = f"{type(e).__name__}: {str(e)[:300]}"
        progress(f"path {name!r} left out: {errors[name]}")
        if "illegal memory access" in str(e) or "unspecified launch failure" in str(e):
            raise  # the CUDA context is gone: nothing more can run in this process
        return
    fns[name] = fn


def compare(out: torch.Tensor, ref: torch.Tensor, dtype_name: str) -> dict[str, Any]:
    out, ref = out.float(), ref.float()
    rel = ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()
    agree = (out.argmax(1) == ref.argmax(1)).float().mean().item()
    return {"max_rel_diff": rel, "top1_agreement": agree, "ok": rel <= TOLERANCE[dtype_name]}


def progress(msg: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {msg}", flush=True)


# ------------------------------------------------------------------------------------------------- the models


def timm_model(name: str = "mobilenetv1_100") -> tuple[nn.Module | None, str]:
    """timm's model (random weights: speed does not depend on them), or None with the reason."""
    try:
        from benchmarks.timm_peer import import_timm

        timm = import_timm()
        return timm.create_model(name, pretrained=False), f"timm {timm.__version__}"
    except Exception as e:  # ImportError, or a timm too old/new for this torch
        return None, f"timm unavailable: {type(e).__name__}: {e}"


def ours_model(cfg: dict[str, Any]) -> nn.Module:
    """Our MobileNet v1 with timm's function (preset "timm": ReLU6, symmetric padding), random weights."""
    from mobilenet.model import MobileNetV1

    torch.manual_seed(0)
    model = MobileNetV1(preset="timm", width_mult=cfg["width_mult"], resolution=cfg["resolution"]).eval()
    for m in model.modules():  # BN statistics that matter, so the correctness checks mean something
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def fused_available(device: torch.device) -> tuple[bool, str]:
    from mobilenet.kernels import kernels_usable, triton_available

    if not triton_available():
        return False, "Triton is not installed"
    if not kernels_usable(device.type):
        return False, f"Triton kernels cannot run on {device.type} here (no TRITON_INTERPRET)"
    return True, ""


# ---------------------------------------------------------------------------------------------- the sections


def section_inference(cfg: dict[str, Any]) -> dict[str, Any]:
    from mobilenet.deploy.fold import fold_bn
    from mobilenet.deploy.static import static_model
    from mobilenet.kernels.fast import count_fused, fused_inference_model

    dev, res, cl = _device(cfg["dry_run"]), cfg["resolution"], torch.channels_last
    deadline = time.monotonic() + cfg["cap_s"] - 5
    ours = ours_model(cfg)
    peer, peer_note = timm_model()
    fused_ok, fused_note = fused_available(dev)
    result: dict[str, Any] = {"resolution": res, "width_mult": cfg["width_mult"], "peer": peer_note,
                              "fused": fused_note or "ok", "groups": [], "skipped": {}, "errors": {}}
    eager_ours, fused_ours = static_model(fold_bn(ours)), fused_inference_model(ours) if fused_ok else None
    if fused_ours is not None:
        result["fused_blocks"] = count_fused(fused_ours)
    models_of: dict[str, dict[str, nn.Module]] = {}

    def models(dname: str) -> dict[str, nn.Module]:
        if dname not in models_of:
            dt = DTYPES[dname]
            ms = {"ours eager": copy.deepcopy(eager_ours).to(dev, dt).to(memory_format=cl)}
            if fused_ours is not None:
                ms["ours fused"] = copy.deepcopy(fused_ours).to(dev, dt).to(memory_format=cl)
            if peer is not None:
                ms["timm eager"] = copy.deepcopy(peer).eval().to(dev, dt).to(memory_format=cl)
            models_of[dname] = ms
        return models_of[dname]

    result["compiled"] = []
    for dname, batch in groups_by_value(cfg):
        if (dname, batch) == ("compiled", 0):
            result["compiled"] = _compiled_rows(cfg, eager_ours, fused_ours, peer, dev, deadline)
            save_partial(cfg, result)
            continue
        if time.monotonic() > deadline:
            result["skipped"][f"batch {batch} {dname}"] = "section time cap reached"
            continue
        dt = DTYPES[dname]
        g = torch.Generator().manual_seed(batch)
        x32 = torch.randn(batch, 3, res, res, generator=g).to(dev)
        with torch.no_grad():
            ref = ours.to(dev)(x32)
        x = x32.to(dt).contiguous(memory_format=cl)
        fns: dict[str, Callable[[], Any]] = {}
        checks: dict[str, Any] = {}
        for name, m in models(dname).items():
            add_path(fns, result["errors"], f"{name} (batch {batch} {dname})", no_grad_call, m, x)
            if dev.type == "cuda":
                graphs = name.replace("eager", "").strip() + " graphs"
                add_path(fns, result["errors"], f"{graphs} (batch {batch} {dname})", cuda_graph, m, x)
        fns = {k.split(" (batch")[0]: v for k, v in fns.items()}
        for name, fn in fns.items():
            if name.startswith("ours"):
                checks[name] = compare(fn(), ref, dname)
        samples = interleaved(fns, dev, **cfg["timing"])
        del fns
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        group = {"batch": batch, "dtype": dname, "checks": checks,
                 "img_per_s": {k: batch / statistics.median(v) for k, v in samples.items()},
                 "ms": {k: 1e3 * statistics.median(v) for k, v in samples.items()},
                 "ratios": _ratios_vs_timm(samples)}
        result["groups"].append(group)
        save_partial(cfg, result)
        progress(f"inference batch {batch} {dname}: " + ", ".join(
            f"{k} {v:,.0f}" for k, v in group["img_per_s"].items()) + " img/s")
    return result


def groups_by_value(cfg: dict[str, Any]) -> list[tuple[str, int]]:
    """(dtype, batch) in the order they are worth measuring: bf16 (what one deploys on a GPU) at the largest and
    smallest batch, the torch.compile comparison (marked ("compiled", 0)), then the rest."""
    pairs = [(d, b) for d in cfg["dtypes"] for b in cfg["batches"]]
    first = [p for p in ((("bf16" if "bf16" in cfg["dtypes"] else cfg["dtypes"][0]), b)
                         for b in (max(cfg["batches"]), min(cfg["batches"]))) if p in pairs]
    rest = sorted((p for p in pairs if p not in first), key=lambda p: ("fp32" == p[0], p[0], -p[1]))
    return list(dict.fromkeys(first)) + [("compiled", 0)] + rest


def save_partial(cfg: dict[str, Any], result: dict[str, Any]) -> None:
    """Write what a section has measured so far: a later crash of the process (a CUDA fault) keeps it."""
    if cfg.get("result_path"):
        Path(cfg["result_path"]).write_text(json.dumps(result | {"partial": True}, indent=1))


def _ratios_vs_timm(samples: dict[str, list[float]]) -> dict[str, Any]:
    out = {}
    for ours_name in [k for k in samples if k.startswith("ours")]:
        for peer_name in [k for k in samples if k.startswith("timm")]:
            out[f"{ours_name} / {peer_name}"] = ratio(samples, ours_name, peer_name)
    return out


def _compiled_rows(cfg, eager_ours, fused_ours, peer, dev, deadline) -> list[dict[str, Any]]:
    """torch.compile (default mode) of ours and timm in bf16, beside the fused model, at the largest and smallest
    batch; at batch 1 the compiled models are also replayed as CUDA graphs."""
    rows: list[dict[str, Any]] = []
    dname = "bf16" if "bf16" in cfg["dtypes"] else cfg["dtypes"][0]
    dt, cl, res = DTYPES[dname], torch.channels_last, cfg["resolution"]
    for batch in sorted({max(cfg["batches"]), min(cfg["batches"])}, reverse=True):
        if time.monotonic() > deadline - (0 if cfg["dry_run"] else 60):
            rows.append({"batch": batch, "dtype": dname, "skipped": "section time cap reached before compiling"})
            continue
        x = torch.randn(batch, 3, res, res, device=dev).to(dt).contiguous(memory_format=cl)
        fns: dict[str, Callable[[], Any]] = {}
        compile_s: dict[str, float] = {}
        candidates = {"ours": eager_ours} | ({"timm": peer.eval()} if peer is not None else {})
        errors: dict[str, str] = {}
        for name, m in candidates.items():
            m = copy.deepcopy(m).to(dev, dt).to(memory_format=cl)
            t = time.perf_counter()
            compiled = torch.compile(m, dynamic=False, backend=cfg["compile_backend"])
            add_path(fns, errors, f"{name} compiled", no_grad_call, compiled, x)  # compiles it
            _sync(dev)
            compile_s[name] = time.perf_counter() - t
            if dev.type == "cuda" and batch == min(cfg["batches"]):
                add_path(fns, errors, f"{name} compiled graphs", cuda_graph, compiled, x)
        if fused_ours is not None:
            fm = copy.deepcopy(fused_ours).to(dev, dt).to(memory_format=cl)
            add_path(fns, errors, "ours fused", no_grad_call, fm, x)
            if dev.type == "cuda":
                add_path(fns, errors, "ours fused graphs", cuda_graph, fm, x)
        samples = interleaved(fns, dev, **cfg["timing"])
        del fns
        row = {"batch": batch, "dtype": dname, "compile_s": compile_s, "errors": errors,
               "img_per_s": {k: batch / statistics.median(v) for k, v in samples.items()},
               "ms": {k: 1e3 * statistics.median(v) for k, v in samples.items()},
               "ratios": _ratios_vs_timm(samples)}
        rows.append(row)
        progress(f"compiled batch {batch} {dname}: " + ", ".join(
            f"{k} {v:,.0f}" for k, v in row["img_per_s"].items()) + " img/s")
    return rows


def section_blocks(cfg: dict[str, Any]) -> dict[str, Any]:
    """Every depthwise separable block alone at the largest batch (bf16 on a GPU): the fused kernel against the
    BN-folded PyTorch block (cuDNN depthwise + pointwise), each with the bytes it must move at least and the rate
    that makes, so the next kernel work goes where the time is."""
    from mobilenet.deploy.fold import fold_bn
    from mobilenet.kernels import dwpw as dwpw_module
    from mobilenet.kernels.fast import FusedSeparable

    dev, cl = _device(cfg["dry_run"]), torch.channels_last
    fused_ok, fused_note = fused_available(dev)
    if not fused_ok:
        return {"skipped": fused_note}
    dname = "bf16" if dev.type == "cuda" else "fp32"
    dt, batch, res = DTYPES[dname], max(cfg["batches"]), cfg["resolution"]
    folded = fold_bn(ours_model(cfg)).to(dev, dt).to(memory_format=cl)
    x = torch.randn(batch, 3, res, res, device=dev).to(dt).contiguous(memory_format=cl)
    with torch.no_grad():
        x = folded.stem(x)
    result: dict[str, Any] = {"batch": batch, "dtype": dname, "blocks": []}
    for i, block in enumerate(folded.blocks):
        fused = FusedSeparable(block)
        with torch.no_grad():
            y = block(x)
            fns = {"cudnn": no_grad_call(block, x), "fused": no_grad_call(fused, x)}
            samples = interleaved(fns, dev, **cfg["timing"])
        mid = x.shape[0] * x.shape[1] * y.shape[2] * y.shape[3]  # the depthwise output the fusion keeps on chip
        need = (x.numel() + y.numel()) * x.element_size()  # bytes in and out, each once
        row = {"block": i, "in": list(x.shape[1:]), "out": list(y.shape[1:]), "min_bytes": need,
               "unfused_bytes": need + 2 * mid * x.element_size()}
        for k, v in samples.items():
            t = statistics.median(v)
            row[f"{k}_us"] = t * 1e6
            row[f"{k}_gb_s"] = need / t / 1e9
        row["fused_vs_cudnn"] = ratio(samples, "fused", "cudnn")
        row["config"] = next((list(c) for key, c in dwpw_module._chosen.items()
                              if key[0][:4] == (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
                              and key[0][6] == y.shape[1]), None)
        result["blocks"].append(row)
        progress(f"block {i} {tuple(x.shape[1:])}->{tuple(y.shape[1:])}: cudnn {row['cudnn_us']:.0f} us, fused "
                 f"{row['fused_us']:.0f} us ({row['fused_gb_s']:.0f} GB/s), config {row['config']}")
        x = y
    return result


def section_training(cfg: dict[str, Any]) -> dict[str, Any]:
    from mobilenet.kernels.fast import use_triton_depthwise

    dev, res, batch, cl = _device(cfg["dry_run"]), cfg["resolution"], cfg["train_batch"], torch.channels_last
    deadline = time.monotonic() + cfg["cap_s"] - 5
    amp = torch.bfloat16
    peer, peer_note = timm_model()
    fused_ok, fused_note = fused_available(dev)
    result: dict[str, Any] = {"batch": batch, "resolution": res, "amp": "bf16", "channels_last": True,
                              "peer": peer_note, "triton_depthwise": fused_note or "ok", "rows": {}}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, res, res, generator=g).to(dev).contiguous(memory_format=cl)
    y = torch.randint(0, 1000, (batch,), generator=g).to(dev)

    def build(name: str) -> nn.Module:
        from mobilenet.model import MobileNetV1

        if name.startswith("timm"):
            m = copy.deepcopy(peer)
        else:
            torch.manual_seed(0)
            m = MobileNetV1(preset="timm", width_mult=cfg["width_mult"], resolution=res)
            if "triton" in name:
                use_triton_depthwise(m)
        return m.to(dev).to(memory_format=cl).train()

    def stepper(model: nn.Module) -> Callable[[], torch.Tensor]:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=4e-5)

        def step() -> torch.Tensor:
            with torch.autocast(dev.type, dtype=amp):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss
        return step

    names = ["ours eager"] + (["ours triton-dw"] if fused_ok else []) + (["timm eager"] if peer is not None else [])
    result["errors"] = {}
    if fused_ok:
        try:
            result["gradient_check"] = _gradient_check(build, x, y, dev)
        except Exception as e:  # noqa: BLE001  (reported; the timing below still runs)
            result["errors"]["gradient check"] = f"{type(e).__name__}: {str(e)[:300]}"
    fns: dict[str, Callable[[], Any]] = {}
    for n in names:
        add_path(fns, result["errors"], n, lambda n: stepper(build(n)), n)
    names = list(fns)
    samples = interleaved(fns, dev, **cfg["timing"] | {"sample_s": cfg["timing"]["sample_s"] * 8})
    for n, v in samples.items():
        result["rows"][n] = {"img_per_s": batch / statistics.median(v)}
    result["ratios"] = {f"{a} / timm eager": ratio(samples, a, "timm eager") for a in names if a != "timm eager"
                        and "timm eager" in samples}
    progress("training eager: " + ", ".join(f"{k} {v['img_per_s']:,.0f}" for k, v in result["rows"].items())
             + " img/s")
    del fns
    # compiled: timm first (the peer a user would compile), then ours
    compiled: dict[str, Callable[[], Any]] = {}
    for n in [k for k in ("timm eager", "ours eager") if k in names]:
        if time.monotonic() > deadline - (0 if cfg["dry_run"] else 70):
            result.setdefault("skipped", {})[n.replace("eager", "compiled")] = "section time cap reached"
            continue
        m = build(n)
        t = time.perf_counter()
        step = stepper(torch.compile(m, backend=cfg["compile_backend"]))
        for _ in range(2):
            step()
        _sync(dev)
        compiled[n.replace("eager", "compiled")] = step
        result.setdefault("compile_s", {})[n.replace("eager", "compiled")] = time.perf_counter() - t
    if compiled:
        if "timm eager" in names:
            compiled["timm eager"] = stepper(build("timm eager"))
        samples = interleaved(compiled, dev, **cfg["timing"] | {"sample_s": cfg["timing"]["sample_s"] * 8})
        for n, v in samples.items():
            result["rows"].setdefault(n + " (2nd run)" if n == "timm eager" else n, {})["img_per_s"] = (
                batch / statistics.median(v))
        if "timm eager" in samples:
            for n in samples:
                if n != "timm eager":
                    result["ratios"][f"{n} / timm eager"] = ratio(samples, n, "timm eager")
        progress("training compiled: " + ", ".join(f"{k} {batch / statistics.median(v):,.0f}"
                                                   for k, v in samples.items()) + " img/s")
    return result


def _gradient_check(build: Callable[[str], nn.Module], x: torch.Tensor, y: torch.Tensor,
                    dev: torch.device) -> dict[str, Any]:
    """One bf16 training step's gradients, PyTorch's depthwise conv and ours, each against an fp32 step of the same
    weights on the same batch: the Triton conv is right when it is no further from fp32 than PyTorch's bf16 is."""
    exact = build("ours eager")
    F.cross_entropy(exact(x), y).backward()
    errors: dict[str, list[float]] = {}
    for name in ("ours eager", "ours triton-dw"):
        m = build(name)
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            F.cross_entropy(m(x), y).backward()
        errors[name] = [((p.grad - q.grad).norm() / q.grad.norm().clamp_min(1e-12)).item()
                        for p, q in zip(m.parameters(), exact.parameters(), strict=True)]
    med = {k: statistics.median(v) for k, v in errors.items()}
    return {"median_rel_error_vs_fp32": med, "ok": med["ours triton-dw"] <= 1.5 * med["ours eager"] + 1e-3}


def section_cifar10(cfg: dict[str, Any]) -> dict[str, Any]:
    data = Path(cfg["cifar_data"])
    if not (data / "train.zip").is_file() or not (data / "test.zip").is_file():
        return {"skipped": f"no CIFAR-10 zips at {data} (train.zip, test.zip)"}
    out = Path(cfg["work"]) / "cifar10"
    cmd = [sys.executable, str(REPO / "benchmarks" / "train_cifar10.py"), "--data", str(data), "--out", str(out),
           "--settings", "alpha1_stem1"]
    if cfg["dry_run"]:
        cmd += ["--device", "cpu", "--amp", "none", "--epochs", "1", "--batch-size", "16", "--max-train", "64",
                "--max-test", "32"]
    else:
        cmd += ["--epochs", str(cfg["cifar_epochs"]), "--budget-min", f"{max(cfg['cap_s'] - 40, 30) / 60:.2f}"]
    progress("cifar10: " + " ".join(cmd[1:]))
    proc = subprocess.run(cmd, text=True, capture_output=True, timeout=cfg["cap_s"] - 5)
    print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n", flush=True)
    report = out / "train_cifar10.json"
    if proc.returncode != 0 or not report.is_file():
        raise RuntimeError(f"train_cifar10.py exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    result = json.loads(report.read_text())
    curve = out / "cifar10_accuracy_vs_time.png"
    if curve.is_file():
        shutil.copy(curve, Path(cfg["out"]) / "cifar10.png")
    result["command"] = " ".join(["python"] + [str(Path(c).relative_to(REPO)) if c.startswith(str(REPO)) else c
                                               for c in cmd[1:]])
    return result


def section_detector(cfg: dict[str, Any]) -> dict[str, Any]:
    from mobilenet.detection.ssd import SSD, SSDConfig
    from mobilenet.kernels.fast import fused_inference_model

    dev, cl = _device(cfg["dry_run"]), torch.channels_last
    size = cfg["ssd_size"]
    torch.manual_seed(0)
    alpha = 0.75 if not cfg["dry_run"] else cfg["width_mult"]
    model = SSD(SSDConfig(num_classes=90, width_mult=alpha, image_size=(size, size))).eval()
    fused_ok, fused_note = fused_available(dev)
    result: dict[str, Any] = {"model": f"ssd_mobilenet_v1 alpha {alpha}, {size}x{size}, 90 classes (network only)",
                              "fused": fused_note or "ok", "groups": [], "errors": {}}
    # one group per (dtype, batch), bf16 first: each group is measured on its own, so a fault in one (the context
    # is lost) keeps what the earlier groups measured; the baseline is eager in the group's dtype
    dtypes = ["bf16", "fp32"] if not cfg["dry_run"] else ["fp32"]
    for dname in dtypes:
        dt = DTYPES[dname]
        m = copy.deepcopy(model).to(dev, dt).to(memory_format=cl)
        fm = fused_inference_model(model).to(dev, dt).to(memory_format=cl) if fused_ok else None
        for batch in cfg["ssd_batches"]:
            x = torch.randn(batch, 3, size, size, device=dev).to(dt).contiguous(memory_format=cl)
            fns: dict[str, Callable[[], Any]] = {}
            add_path(fns, result["errors"], f"eager {dname}", no_grad_call, m, x)
            if dev.type == "cuda":
                add_path(fns, result["errors"], f"graphs {dname}", cuda_graph, m, x)
            if fm is not None:
                add_path(fns, result["errors"], f"fused {dname}", no_grad_call, fm, x)
                if dev.type == "cuda":
                    add_path(fns, result["errors"], f"fused graphs {dname}", cuda_graph, fm, x)
            samples = interleaved(fns, dev, **cfg["timing"])
            del fns
            base = f"eager {dname}"
            group = {"batch": batch, "dtype": dname, "ms": {k: 1e3 * statistics.median(v) for k, v in samples.items()},
                     "vs_eager": {k: ratio(samples, k, base) for k in samples if k != base and base in samples}}
            result["groups"].append(group)
            save_partial(cfg, result)
            progress(f"detector batch {batch} {dname}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in group["ms"].items()))
    return result


def _top_kernels(prof, device: torch.device, limit: int = 12) -> list[dict[str, Any]]:
    rows = []
    for e in prof.key_averages():
        if device.type == "cuda":
            t = getattr(e, "self_device_time_total", None)
            if t is None:  # older torch
                t = getattr(e, "self_cuda_time_total", 0)
        else:
            t = e.self_cpu_time_total
        if t and t > 0:
            rows.append({"kernel": e.key[:110], "us": t, "calls": e.count})
    total = sum(r["us"] for r in rows) or 1.0
    rows.sort(key=lambda r: -r["us"])
    for r in rows:
        r["share"] = r["us"] / total
    return rows[:limit]


def section_profile(cfg: dict[str, Any]) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    from mobilenet.kernels.fast import fused_inference_model, use_triton_depthwise

    dev, res, cl = _device(cfg["dry_run"]), cfg["resolution"], torch.channels_last
    batch, dt = cfg["train_batch"], torch.bfloat16 if dev.type == "cuda" else torch.float32
    peer, peer_note = timm_model()
    fused_ok, _ = fused_available(dev)
    x = torch.randn(batch, 3, res, res, device=dev).to(dt).contiguous(memory_format=cl)
    y = torch.randint(0, 1000, (batch,), device=dev)
    cases: dict[str, tuple[nn.Module, str]] = {}
    if peer is not None:
        cases["timm inference"] = (copy.deepcopy(peer).eval(), "infer")
        cases["timm training"] = (copy.deepcopy(peer).train(), "train")
    ours = ours_model(cfg)
    if fused_ok and dev.type == "cuda":  # (the interpreter's profile says nothing about the kernels' speed)
        cases["ours fused inference"] = (fused_inference_model(ours), "infer")
        tm = copy.deepcopy(ours).train()
        use_triton_depthwise(tm)
        cases["ours triton-dw training"] = (tm, "train")
    cases["ours training"] = (copy.deepcopy(ours).train(), "train")
    result: dict[str, Any] = {"batch": batch, "dtype": str(dt).replace("torch.", ""), "peer": peer_note,
                              "device": dev.type, "cases": {}, "errors": {}}
    for name, (m, kind) in cases.items():
        if kind == "infer":
            m = m.to(dev, dt).to(memory_format=cl)

            def run(m=m):
                with torch.no_grad():
                    m(x)
        else:
            m = m.to(dev).to(memory_format=cl)
            xf = x.float()

            def run(m=m, xf=xf):
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                    loss = F.cross_entropy(m(xf), y)
                loss.backward()
        reps = 3 if dev.type == "cuda" else 1
        try:
            for _ in range(reps):
                run()
            _sync(dev)
            activity = ProfilerActivity.CUDA if dev.type == "cuda" else ProfilerActivity.CPU
            with profile(activities=[activity]) as prof:
                for _ in range(reps):
                    run()
                _sync(dev)
        except Exception as e:  # noqa: BLE001  (one case failing must not cost the others)
            result["errors"][name] = f"{type(e).__name__}: {str(e)[:300]}"
            continue
        result["cases"][name] = _top_kernels(prof, dev)
        top = result["cases"][name][:3]
        progress(f"profile {name}: " + "; ".join(f"{r['share']:.0%} {r['kernel'][:50]}" for r in top))
    return result


def section_bench(cfg: dict[str, Any]) -> dict[str, Any]:
    out = Path(cfg["work"]) / "bench.json"
    cmd = [sys.executable, "-m", "mobilenet", "bench", "mobilenet_v1_100_224", "--no-compile", "--format", "table",
           "--out", str(out)]
    cmd += (["--device", "cpu", "--pass", "forward", "--variants", "eager", "--repeats", "2"]
            if cfg["dry_run"] else ["--device", "cuda", "--repeats", "30"])
    progress("bench: " + " ".join(cmd[1:]))
    proc = subprocess.run(cmd, text=True, capture_output=True, timeout=cfg["cap_s"] - 5, cwd=REPO,
                          env=os.environ | {"PYTHONPATH": str(REPO)})
    print(proc.stdout[-6000:], proc.stderr[-2000:], sep="\n", flush=True)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"mobilenet bench exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return {"command": "mobilenet " + " ".join(cmd[3:-2]), "table": proc.stdout.strip(),
            "result": json.loads(out.read_text())}


RUNNERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "inference": section_inference, "blocks": section_blocks, "training": section_training,
    "cifar10": section_cifar10,
    "detector": section_detector, "profile": section_profile, "bench": section_bench}


# ------------------------------------------------------------------------------------------------ the report


def _fmt_ratio(r: dict[str, float] | None) -> str:
    return "-" if not r else f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"


def render(suite: dict[str, Any]) -> str:
    """The README tables (markdown) from the suite's JSON."""
    env = suite["environment"]
    lines = [f"*{env.get('device', '?')}, torch {env.get('torch')}, Triton {env.get('triton', '-')}; "
             f"{suite['command']}; {suite['finished']}*", ""]
    inf = suite["sections"].get("inference", {}).get("result")
    if inf:
        lines += [f"**Inference**, {inf['resolution']}x{inf['resolution']}, images/s (median of interleaved rounds); "
                  f"peer: {inf['peer']}. `fused`: our BN-folded model with one Triton kernel per depthwise separable "
                  "block; `graphs`: a CUDA-graph replay. Ratio: our fastest path over timm's fastest at the same "
                  "batch and dtype (median, min-max over rounds).", "",
                  "| batch | dtype | timm eager | timm graphs | ours eager | ours graphs | ours fused | "
                  "ours fused graphs | best ours / best timm | fused vs fp32 model |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---|---|"]
        for g in inf["groups"]:
            ips = g["img_per_s"]

            def cell(k, ips=ips):
                return f"{ips[k]:,.0f}" if k in ips else "-"
            best_o = max((k for k in ips if k.startswith("ours")), key=lambda k: ips[k], default=None)
            best_t = max((k for k in ips if k.startswith("timm")), key=lambda k: ips[k], default=None)
            r = g["ratios"].get(f"{best_o} / {best_t}") if best_o and best_t else None
            chk = g["checks"].get("ours fused")
            chk_s = f"{chk['max_rel_diff']:.1e}, top-1 {chk['top1_agreement']:.0%}" if chk else "-"
            lines.append(f"| {g['batch']} | {g['dtype']} | {cell('timm eager')} | {cell('timm graphs')} | "
                         f"{cell('ours eager')} | {cell('ours graphs')} | {cell('ours fused')} | "
                         f"{cell('ours fused graphs')} | {_fmt_ratio(r)} ({best_o} / {best_t}) | {chk_s} |")
        comp = [c for c in inf.get("compiled", []) if "img_per_s" in c]
        if comp:
            lines += ["", "**Against torch.compile** (default mode, `dynamic=False`), images/s:", "",
                      "| batch | dtype | path | img/s | ms per batch | vs timm compiled | compile s |",
                      "|---:|---|---|---:|---:|---|---:|"]
            for c in comp:
                for k, v in c["img_per_s"].items():
                    peer_key = "timm compiled graphs" if "graphs" in k and "timm compiled graphs" in c[
                        "img_per_s"] else "timm compiled"
                    r = c["ratios"].get(f"{k} / {peer_key}")
                    cs = c["compile_s"].get(k.split()[0]) if "compiled" in k else None
                    lines.append(f"| {c['batch']} | {c['dtype']} | {k} | {v:,.0f} | {c['ms'][k]:.3f} | "
                                 f"{_fmt_ratio(r) if r else '-'} | {f'{cs:.0f}' if cs else '-'} |")
    bl = suite["sections"].get("blocks", {}).get("result")
    if bl and "blocks" in bl:
        lines += ["", f"**Each depthwise separable block alone** (batch {bl['batch']}, {bl['dtype']}): microseconds, "
                  "and the rate over the bytes the block must move at least (input and output once):", "",
                  "| block | in -> out | cuDNN us | fused us | fused GB/s | fused vs cuDNN | tiling (M, N, K, warps, "
                  "stages) |", "|---:|---|---:|---:|---:|---|---|"]
        for r in bl["blocks"]:
            lines.append(f"| {r['block']} | {'x'.join(map(str, r['in']))} -> {'x'.join(map(str, r['out']))} | "
                         f"{r['cudnn_us']:.0f} | {r['fused_us']:.0f} | {r['fused_gb_s']:.0f} | "
                         f"{_fmt_ratio(r['fused_vs_cudnn'])} | {r['config']} |")
    tr = suite["sections"].get("training", {}).get("result")
    if tr:
        lines += ["", f"**Training step** (batch {tr['batch']}, {tr['resolution']} px, {tr['amp']} autocast, "
                  f"channels_last, SGD), images/s; peer: {tr['peer']}:", "",
                  "| model | img/s | vs timm eager (same run) |", "|---|---:|---|"]
        for k, v in tr["rows"].items():
            if "img_per_s" in v:
                lines.append(f"| {k} | {v['img_per_s']:,.0f} | {_fmt_ratio(tr['ratios'].get(f'{k} / timm eager'))} |")
        if "gradient_check" in tr:
            e = tr["gradient_check"]["median_rel_error_vs_fp32"]
            lines.append(f"\nGradients of one bf16 step against an fp32 step from the same weights (median relative "
                         f"error over the parameters): PyTorch's depthwise conv {e['ours eager']:.1e}, the Triton "
                         f"conv {e['ours triton-dw']:.1e}.")
    cf = suite["sections"].get("cifar10", {}).get("result")
    if cf and "results" in cf:
        lines += ["", f"**CIFAR-10** (`{cf.get('command', 'benchmarks/train_cifar10.py')}`):", "",
                  "| setting | epochs | final top-1 % | best top-1 % | minutes | minutes to target |",
                  "|---|---:|---:|---:|---:|---|"]
        for r in cf["results"]:
            to = f"{r['seconds_to_target'] / 60:.1f}" if r.get("seconds_to_target") else "not reached"
            lines.append(f"| {r['setting']} | {r['epochs_run']} | {r['final_top1']:.2f} | {r['best_top1']:.2f} | "
                         f"{r['seconds'] / 60:.1f} | {to} (target {r['target']}%) |")
    de = suite["sections"].get("detector", {}).get("result")
    if de:
        lines += ["", f"**Detector**, {de['model']}, channels_last, ms per batch (speed-up over eager in the same "
                  "dtype):", "", "| batch | path | ms | vs eager |", "|---:|---|---:|---|"]
        for g in de["groups"]:
            for k, v in g["ms"].items():
                lines.append(f"| {g['batch']} | {k} | {v:.3f} | {_fmt_ratio(g['vs_eager'].get(k))} |")
    pr = suite["sections"].get("profile", {}).get("result")
    if pr and "cases" in pr:
        lines += ["", f"**Where the time goes** (batch {pr['batch']}, {pr['dtype']}; top kernels by {pr['device']} "
                  "time):", ""]
        for name, rows in pr["cases"].items():
            lines.append(f"- {name}: " + "; ".join(f"{r['share']:.0%} `{r['kernel'][:60]}`" for r in rows[:4]))
    status = [f"{n}: {s['status']}" + (f" ({s.get('reason', '')})" if s.get("reason") else "")
              for n, s in suite["sections"].items()]
    lines += ["", "Sections: " + "; ".join(status) + "."]
    for n, s in suite["sections"].items():
        errors = dict((s.get("result") or {}).get("errors") or {})
        for c in (s.get("result") or {}).get("compiled") or []:
            errors |= c.get("errors") or {}
        if errors:
            lines.append(f"Left out of {n}: " + "; ".join(f"{k} ({v})" for k, v in errors.items()) + ".")
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------- orchestration


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {"torch": torch.__version__, "python": sys.version.split()[0]}
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    else:
        env["device"] = "cpu (dry run)"
    with contextlib.suppress(ImportError):
        import triton

        env["triton"] = triton.__version__
    return env


def settings(args: argparse.Namespace) -> dict[str, Any]:
    dry = args.dry_run
    return {
        "dry_run": dry, "out": str(args.out), "work": str(args.work), "cifar_data": str(args.cifar_data),
        "resolution": 32 if dry else 224, "width_mult": 0.125 if dry else 1.0,
        "batches": [1] if dry else [1, 32, 256], "dtypes": ["fp32"] if dry else ["fp32", "bf16", "fp16"],
        # the dry run's numbers mean nothing: no warm-up, one round of one call per path
        "timing": ({"rounds": 1, "warmup": 0, "sample_s": 0.0} if dry
                   else {"rounds": 7, "warmup": 3, "sample_s": 0.025}),
        # the dry run traces with dynamo but skips inductor's code generation (minutes on a small CPU)
        "compile_backend": "eager" if dry else "inductor",
        # batch 2: the fewest images a BatchNorm in training mode takes at the last blocks' 1x1 maps
        "train_batch": 2 if dry else 256, "ssd_size": 64 if dry else 300, "ssd_batches": [1] if dry else [1, 32],
        "cifar_epochs": args.cifar_epochs,
    }


def run_suite(args: argparse.Namespace) -> int:
    args.work = args.work or args.out / "work"
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    cfg = settings(args)
    budget_s = args.budget_min * 60
    t0 = time.monotonic()
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        print(f"gpu_suite: unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_suite: no CUDA device; use --dry-run to check the suite on the CPU", file=sys.stderr)
        return 2
    suite: dict[str, Any] = {"command": "python benchmarks/gpu_suite.py" + (" --dry-run" if args.dry_run else "")
                             + f" --budget-min {args.budget_min:g}", "environment": environment(),
                             "budget_s": budget_s, "sections": {}}
    env = os.environ | {"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    if args.dry_run and not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"  # the fused kernels run in Triton's CPU interpreter
    if args.dry_run:
        # tiny models on a small (often shared) CPU: one thread; a second one spins at every op's barrier (the dry
        # run's sections took about 2.5x the CPU time with two threads on a busy 2-core machine)
        env["OMP_NUM_THREADS"] = "1"
    log = open(args.out / "suite.log", "w")
    for name in wanted:
        cap = SECTIONS[name][0] * (4 if args.dry_run else 1)
        left = budget_s - (time.monotonic() - t0)
        entry: dict[str, Any] = {"cap_s": cap}
        if left < min(cap, 25):
            entry.update(status="skipped", reason=f"budget spent ({left:.0f} s left)")
        else:
            cap = min(cap, left)
            print(f"[{time.monotonic() - t0:5.0f} s / {budget_s:.0f} s] {name}: {SECTIONS[name][1]} "
                  f"(cap {cap:.0f} s)", flush=True)
            result_path = args.work / f"{name}.json"
            result_path.unlink(missing_ok=True)
            cmd = [sys.executable, __file__, "--section", name, "--result", str(result_path),
                   "--config", json.dumps(cfg | {"cap_s": cap, "result_path": str(result_path)})]
            start = time.monotonic()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
            watchdog = threading.Timer(cap + 30, proc.kill)  # a section that hangs silently is stopped too
            watchdog.start()
            tail: list[str] = []
            assert proc.stdout is not None
            for line in proc.stdout:  # stream the section's output (progress) while it runs
                print(line, end="", flush=True)
                log.write(line)
                tail = (tail + [line])[-15:]
            rc = proc.wait()
            watchdog.cancel()
            entry["seconds"] = time.monotonic() - start
            if rc == 0 and result_path.is_file():
                entry["result"] = json.loads(result_path.read_text())
                skipped = entry["result"].get("skipped")
                entry.update(status="skipped", reason=skipped) if isinstance(skipped, str) else entry.update(
                    status="ok")
            else:
                entry.update(status="failed", reason=f"exit {rc}" + (" (time cap)" if rc in (-9, 137) else ""),
                             output_tail="".join(tail)[-3000:])
                if result_path.is_file():  # what it measured before it died
                    entry["result"] = json.loads(result_path.read_text())
                    entry["status"] = "partial"
            print(f"[{time.monotonic() - t0:5.0f} s] {name}: {entry['status']} in {entry['seconds']:.0f} s", flush=True)
        suite["sections"][name] = entry
        suite["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        suite["elapsed_s"] = time.monotonic() - t0
        (args.out / "suite.json").write_text(json.dumps(suite, indent=1))
        (args.out / "suite.md").write_text(render(suite))
    log.close()
    print()
    print((args.out / "suite.md").read_text())
    failed = [n for n, s in suite["sections"].items() if s["status"] in ("failed", "partial")]
    return 1 if failed else 0


def run_section(args: argparse.Namespace) -> int:
    cfg = json.loads(args.config)
    if not cfg["dry_run"]:
        torch.backends.cudnn.benchmark = True
    result = RUNNERS[args.section](cfg)
    Path(args.result).write_text(json.dumps(result, indent=1))  # the whole result replaces any partial one
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "gpu_suite")
    p.add_argument("--budget-min", type=float, default=8.0, help="wall-clock budget for all sections (minutes)")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated, in the order to run them")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: check that every section runs")
    p.add_argument("--cifar-data", type=Path, default=Path(os.environ.get(
        "MOBILENET_DATA", REPO.parent / "shared" / "data")) / "cifar10", help="folder with train.zip and test.zip")
    p.add_argument("--cifar-epochs", type=int, default=40)
    p.add_argument("--work", type=Path, default=None, help="scratch folder for section results (default: OUT/work)")
    p.add_argument("--section", choices=tuple(SECTIONS), help=argparse.SUPPRESS)  # internal: run one section
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.budget_min <= 0:
        p.error(f"--budget-min must be > 0, got {args.budget_min}")
    return run_section(args) if args.section else run_suite(args)


if __name__ == "__main__":
    sys.exit(main())
