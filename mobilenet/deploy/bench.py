"""The time table: latency of every deployment path of one model, measured side by side on this machine.

Rows are device (cpu, cuda) x pass (forward, forward-backward) x variant. Within one (device, pass)
group the variants are timed **interleaved** (round-robin, the order rotated every round), so a
background load on a shared machine slows all of them alike and the ratios stay honest. Each sample is
one call (CUDA: followed by a synchronisation); we report the median and the 10th/90th percentiles.

Variants
    cpu forward: every deployment path of :mod:`mobilenet.deploy.paths`: ``eager`` (fp32, the reference),
    ``folded`` (BN folded), ``channels_last``, ``compile`` (``torch.compile`` of the folded model), ``int8`` (FX
    x86 PTQ), and each export in its runtime (a row per runtime): ``onnxruntime`` and ``onnxruntime-int8`` (QDQ),
    ``openvino`` (f32), ``openvino-bf16``, ``openvino-int8`` (what ``export --format openvino-int8`` writes: our
    QDQ ONNX converted for a classifier, NNCF for a detector), ``openvino-int8-nncf`` (``--method nncf``),
    ``tflite``, ``executorch`` and ``executorch-int8`` (XNNPACK), each where its runtime is installed; with
    ``peers`` also what a user gets without us (``peer-openvino``: OpenVINO's defaults on our ONNX;
    ``peer-openvino-nncf``: its int8 recipe, NNCF's defaults, on the same file; ``peer-timm``; ``peer-tflite`` on
    Google's file). A runtime row times the runtime on its own input (layout and dtype converted beforehand).
    cpu forward-backward (train mode): ``eager``, ``channels_last``, ``compile``.
    cuda forward: ``eager``, ``folded``, ``channels_last``, ``fp16``, ``bf16`` (folded, channels_last,
    half-precision weights), ``compile-fp16`` and ``cuda-graphs-fp16`` (a captured static-shape replay).
    cuda forward-backward: ``eager``, ``channels_last``, ``amp-fp16``, ``amp-bf16``, ``compile-amp-bf16``.

The int8 and ONNX Runtime int8 rows are calibrated on random inputs: that changes their accuracy,
not their speed.
"""

from __future__ import annotations

import contextlib
import copy
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from .. import strict_json
from ..model import MobileNetV1
from .fold import fold_bn
from .paths import OURS, PATHS, PEERS

DEVICES = ("cpu", "cuda")
PASSES = ("forward", "forward-backward")
CPU_FORWARD = OURS  # every CPU path is a deployment path (mobilenet.deploy.paths)
CPU_PEERS = PEERS
CPU_TRAIN = ("eager", "channels_last", "compile")
CUDA_FORWARD = ("eager", "folded", "channels_last", "fp16", "bf16", "compile-fp16", "cuda-graphs-fp16")
CUDA_TRAIN = ("eager", "channels_last", "amp-fp16", "amp-bf16", "compile-amp-bf16")
# not float32 (int8, bf16, a runtime's default, a peer's own file): left out of the float recommendation
QUANTIZED = frozenset(n for n, p in PATHS.items() if p.precision != "float32")
REDUCED = frozenset({"fp16", "bf16", "compile-fp16", "cuda-graphs-fp16"})
ALL_VARIANTS = tuple(dict.fromkeys(CPU_FORWARD + CPU_PEERS + CPU_TRAIN + CUDA_FORWARD + CUDA_TRAIN))


@dataclass
class Row:
    """One line of the time table (times in milliseconds per call of ``batch_size`` images)."""

    device: str
    pass_: str
    variant: str
    batch_size: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    samples: int
    speedup: float = 1.0  # eager median / this median, same device and pass, same run
    images_per_s: float = 0.0
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pass"] = d.pop("pass_")
        return d


@dataclass
class BenchResult:
    """Rows, the machine they were measured on, skipped variants (with why) and the recommendation."""

    model: str
    rows: list[Row]
    environment: dict[str, Any]
    skipped: dict[str, str] = field(default_factory=dict)
    recommended: dict[str, str] = field(default_factory=dict)  # device -> fastest float forward variant

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "environment": self.environment, "rows": [r.to_dict() for r in self.rows],
                "skipped": self.skipped, "recommended": self.recommended}


def environment(device_names: Sequence[str] = ("cpu",)) -> dict[str, Any]:
    """Versions, threads and hardware names printed beside every table."""
    env: dict[str, Any] = {
        "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
        "cpu": _cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "quantized_engine": torch.backends.quantized.engine,
    }
    from importlib.metadata import PackageNotFoundError, version

    for package in ("onnxruntime", "openvino", "ai-edge-litert", "executorch"):  # without importing them
        with contextlib.suppress(PackageNotFoundError):
            env[package] = version(package)
    if "cuda" in device_names and torch.cuda.is_available():
        env["cuda_device"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    return env


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    *,
    repeats: int,
    warmup: int,
    sync: Callable[[], None] = lambda: None,
    min_sample_s: float = 0.0,
    progress: bool = False,
    desc: str = "timing",
) -> dict[str, list[float]]:
    """Seconds per call of each function, sampled round-robin; the order rotates every round.

    A sample is a block of consecutive calls of one function lasting about ``min_sample_s`` (at least
    one call), divided by its call count: switching between runtimes (OpenMP and ONNX Runtime thread
    pools waking up on a small CPU) then costs once per block instead of once per call.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    names = list(fns)
    inner: dict[str, int] = {}
    for name in names:
        for _ in range(warmup):
            fns[name]()
        sync()
        inner[name] = 1
        if min_sample_s > 0:  # size the block from one more call
            t0 = time.perf_counter()
            fns[name]()
            sync()
            inner[name] = max(1, min(100, round(min_sample_s / max(time.perf_counter() - t0, 1e-9))))
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in tqdm(range(repeats), desc=desc, disable=not progress, leave=False):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            fn, n = fns[name], inner[name]
            sync()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            sync()
            times[name].append((time.perf_counter() - t0) / n)
    return times


def _percentile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    pos = (len(s) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarise(device: str, pass_: str, times: dict[str, list[float]], batch_size: int,
              dtypes: dict[str, str]) -> list[Row]:
    """Rows (ms) from raw samples (s), with the speed-up over ``eager`` when it was measured."""
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts) * 1e3
        rows.append(Row(device, pass_, name, batch_size, med, _percentile(ts, 0.1) * 1e3,
                        _percentile(ts, 0.9) * 1e3, len(ts), images_per_s=batch_size / (med / 1e3),
                        dtype=dtypes.get(name, "float32")))
    ref = next((r.median_ms for r in rows if r.variant == "eager"), None)
    for r in rows:
        r.speedup = ref / r.median_ms if ref else float("nan")
    return rows


# ---- variant builders: each returns (call, dtype) or raises _Skip with the reason ----

class _Skip(Exception):
    pass


def _train_step(model: nn.Module, x: torch.Tensor, autocast: torch.dtype | None = None) -> Callable[[], None]:
    # One training step without the optimiser: forward in train mode, a scalar loss, backward.
    def step() -> None:
        ctx = torch.autocast(x.device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
        with ctx:
            loss = model(x).float().square().mean()
        loss.backward()
        for p in model.parameters():
            p.grad = None
    return step


def _inference(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> Callable[[], Any]:
    def call() -> Any:
        with torch.inference_mode():
            return fn(x)
    return call


def _no_grad(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> Callable[[], Any]:
    # torch.compile'd graphs and CUDA graphs are built under no_grad (inference_mode tensors cannot be
    # captured into them).
    def call() -> Any:
        with torch.no_grad():
            return fn(x)
    return call


def _cpu_forward(model: MobileNetV1, variant: str, x: torch.Tensor, tmp: str, *,
                 google_tflite: str | None = None) -> tuple[Callable[[], Any], str]:
    from .paths import PATHS, Unavailable, build

    if variant not in PATHS:
        raise _Skip(f"not a cpu forward variant (choose from {', '.join(CPU_FORWARD + CPU_PEERS)})")
    try:
        built = build(model, variant, batch=len(x), threads=torch.get_num_threads(), folder=tmp,
                      google_file=google_tflite)
    except Unavailable as e:
        raise _Skip(str(e)) from None
    path = PATHS[variant]
    dtype = {"int8": "int8", "bfloat16": "bfloat16"}.get(path.precision, "float32")
    if path.precision == "default":  # OpenVINO's own choice on this CPU
        from ..runtimes.openvino import default_precision

        dtype = {"bf16": "bfloat16", "f16": "float16"}.get(default_precision(), "float32")
    return built.timed(x), dtype


def _cpu_train(model: MobileNetV1, variant: str, x: torch.Tensor) -> tuple[Callable[[], Any], str]:
    m = copy.deepcopy(model).train()
    if variant == "eager":
        return _train_step(m, x), "float32"
    if variant == "channels_last":
        m = m.to(memory_format=torch.channels_last)
        return _train_step(m, x.contiguous(memory_format=torch.channels_last)), "float32"
    if variant == "compile":
        return _train_step(torch.compile(m), x), "float32"
    raise _Skip(f"not a cpu forward-backward variant (choose from {', '.join(CPU_TRAIN)})")


def _cuda_graph(model: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    # Static-shape replay: warm up on a side stream, capture one forward, then replay copies nothing
    # (the input buffer is fixed; a real server would copy into it first).
    static_x = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(3):
            model(static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        graph_out = model(static_x)  # noqa: F841  (kept alive by the closure below)

    def replay() -> torch.Tensor:
        graph.replay()
        return graph_out
    replay.keep_alive = static_x  # every replay reads this buffer: it must live as long as the graph
    return replay


def _cuda_forward(model: MobileNetV1, variant: str, x: torch.Tensor) -> tuple[Callable[[], Any], str]:
    from .static import static_model

    cl = torch.channels_last
    if variant == "eager":
        return _inference(copy.deepcopy(model).cuda(), x), "float32"
    if variant == "folded":
        return _inference(fold_bn(model).cuda(), x), "float32"
    if variant == "channels_last":
        return _inference(copy.deepcopy(model).cuda().to(memory_format=cl), x.contiguous(memory_format=cl)), "float32"
    half = torch.bfloat16 if variant == "bf16" else torch.float16
    fast = static_model(fold_bn(model)).cuda().to(dtype=half, memory_format=cl)
    xh = x.to(half).contiguous(memory_format=cl)
    if variant in ("fp16", "bf16"):
        return _inference(fast, xh), str(half).replace("torch.", "")
    if variant == "compile-fp16":
        return _no_grad(torch.compile(fast, mode="max-autotune-no-cudagraphs"), xh), "float16"
    if variant == "cuda-graphs-fp16":
        return _cuda_graph(fast, xh), "float16"
    raise _Skip(f"not a cuda forward variant (choose from {', '.join(CUDA_FORWARD)})")


def _cuda_train(model: MobileNetV1, variant: str, x: torch.Tensor) -> tuple[Callable[[], Any], str]:
    m = copy.deepcopy(model).cuda().train()
    cl = torch.channels_last
    if variant == "eager":
        return _train_step(m, x), "float32"
    if variant == "channels_last":
        return _train_step(m.to(memory_format=cl), x.contiguous(memory_format=cl)), "float32"
    if variant in ("amp-fp16", "amp-bf16"):
        dt = torch.float16 if variant == "amp-fp16" else torch.bfloat16
        return _train_step(m.to(memory_format=cl), x.contiguous(memory_format=cl), dt), f"amp-{str(dt)[6:]}"
    if variant == "compile-amp-bf16":
        m = torch.compile(m.to(memory_format=cl))
        return _train_step(m, x.contiguous(memory_format=cl), torch.bfloat16), "amp-bfloat16"
    raise _Skip(f"not a cuda forward-backward variant (choose from {', '.join(CUDA_TRAIN)})")


def _wanted(defaults: Sequence[str], variants: Sequence[str] | None, compile: bool) -> tuple[list[str], dict[str, str]]:
    """(variants to time, {variant: why left out}): without an explicit list, the paths that take a minute to
    build (ExecuTorch's lowering) are left out, and ``compile=False`` drops the ``torch.compile`` rows."""
    from .paths import PATHS

    chosen: list[str] = []
    left: dict[str, str] = {}
    for v in defaults:
        if variants is not None and v not in variants:
            continue
        if not compile and "compile" in v:
            continue
        if variants is None and v in PATHS and PATHS[v].slow and "compile" not in v:
            left[v] = "slow to build (about a minute here): name it in --variants to time it"
            continue
        chosen.append(v)
    return chosen, left


def run_bench(
    model: MobileNetV1,
    *,
    batch_size: int = 1,
    resolution: int | None = None,
    devices: Sequence[str] = ("cpu", "cuda"),
    passes: Sequence[str] = PASSES,
    variants: Sequence[str] | None = None,
    compile: bool = True,
    peers: bool = False,
    google_tflite: str | None = None,
    repeats: int = 50,
    warmup: int = 5,
    min_sample_s: float = 0.02,
    progress: bool = True,
    name: str | None = None,
) -> BenchResult:
    """Time every requested variant of ``model`` (see the module docstring) and return the table.

    ``devices``: "cuda" is skipped (and said so in ``skipped``) without a CUDA device. ``variants``:
    a subset of the variant names (default: all but the slow-to-build ExecuTorch rows). ``compile=False`` drops
    the ``torch.compile`` rows (their first call compiles for tens of seconds on a small CPU). ``peers``: add the
    CPU rows of what a user runs without us (see :mod:`mobilenet.deploy.paths`); ``google_tflite``: Google's own
    ``.tflite`` of this variant for the ``peer-tflite`` row. ``min_sample_s``: see
    :func:`time_interleaved` (a sample of a fast variant averages several consecutive calls).
    """
    if not isinstance(model, MobileNetV1):
        raise TypeError(f"run_bench expects a MobileNetV1, got {type(model).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for d in devices:
        if d not in DEVICES:
            raise ValueError(f"unknown device {d!r} (choose from {', '.join(DEVICES)})")
    for p in passes:
        if p not in PASSES:
            raise ValueError(f"unknown pass {p!r} (choose from {', '.join(PASSES)})")
    unknown = sorted(set(variants or ()) - set(ALL_VARIANTS))
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)} (choose from {', '.join(ALL_VARIANTS)})")
    model = copy.deepcopy(model).float().cpu().eval()
    r = model.config.resolution if resolution is None else resolution
    x = torch.randn(batch_size, model.config.in_chans, r, r)
    result = BenchResult(name or _model_name(model), [], environment(devices))
    for device in devices:
        if device == "cuda" and not torch.cuda.is_available():
            result.skipped["cuda"] = "no CUDA device"
            continue
        for pass_ in passes:
            table = {("cpu", "forward"): CPU_FORWARD + (CPU_PEERS if peers else ()),
                     ("cpu", "forward-backward"): CPU_TRAIN, ("cuda", "forward"): CUDA_FORWARD,
                     ("cuda", "forward-backward"): CUDA_TRAIN}[(device, pass_)]
            fns, dtypes = {}, {}
            xd = x.to(device)
            wanted, left = _wanted(table, variants, compile)
            result.skipped.update({f"{device}/{pass_}/{v}": why for v, why in left.items()})
            with tempfile.TemporaryDirectory() as tmp:
                for v in wanted:
                    try:
                        if device == "cpu":
                            fn, dt = (_cpu_forward(model, v, xd, tmp, google_tflite=google_tflite) if pass_ == "forward"
                                      else _cpu_train(model, v, xd))
                        else:
                            fn, dt = _cuda_forward(model, v, xd) if pass_ == "forward" else _cuda_train(model, v, xd)
                        fn()  # first call: compiles, captures, allocates; not part of the warm-up count
                    except _Skip as e:
                        result.skipped[f"{device}/{pass_}/{v}"] = str(e)
                        continue
                    fns[v], dtypes[v] = fn, dt
                if not fns:
                    continue
                sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
                times = time_interleaved(fns, repeats=repeats, warmup=warmup, sync=sync, progress=progress,
                                         min_sample_s=min_sample_s, desc=f"{device} {pass_}")
            result.rows.extend(summarise(device, pass_, times, batch_size, dtypes))
    for device in devices:
        floats = [row for row in result.rows if row.device == device and row.pass_ == "forward"
                  and row.variant not in QUANTIZED]
        if floats:
            result.recommended[device] = min(floats, key=lambda row: row.median_ms).variant
    return result


def bench_file(path: str, *, batch_size: int = 1, repeats: int = 50, warmup: int = 5, min_sample_s: float = 0.02,
               progress: bool = True, **options: Any) -> BenchResult:
    """The time of a deployed file in its own runtime (:mod:`mobilenet.runtimes`): one row (OpenVINO: f32 and its
    own default precision, two rows), its runtime and input contract named in ``skipped``-free ``recommended``."""
    from .. import runtimes

    predictors = {}
    if runtimes.runtime_for(path) == "openvino" and "precision" not in options:
        predictors["openvino-f32"] = runtimes.load(path, threads=torch.get_num_threads(), precision="f32", **options)
        predictors["openvino-default"] = runtimes.load(path, threads=torch.get_num_threads(), **options)
    else:
        p = runtimes.load(path, threads=torch.get_num_threads(), **options)
        predictors[p.runtime] = p
    first = next(iter(predictors.values()))
    c, h, w = first.input_shape[1:]
    x = torch.randn(batch_size, int(c), int(h), int(w))  # type: ignore[arg-type]
    fns = {}
    for name, p in predictors.items():
        fed = p.feed(x)
        fns[name] = (lambda p=p, fed=fed: p.run(fed)) if p.input_shape[0] in (None, batch_size) else \
            (lambda p=p: p(x))
        fns[name]()
    times = time_interleaved(fns, repeats=repeats, warmup=warmup, progress=progress, min_sample_s=min_sample_s,
                             desc="file")
    rows = summarise("cpu", "forward", times, batch_size, {n: first.input_dtype for n in fns})
    for r in rows:
        r.speedup = float("nan")  # no eager reference: the file is all there is
    env = environment()
    env.update({f"runtime:{n}": p.describe() for n, p in predictors.items()})
    return BenchResult(Path(path).name, rows, env)


def _model_name(model: MobileNetV1) -> str:
    from ..zoo import variant_name

    c = model.config
    return f"{variant_name(c.width_mult, c.resolution)} ({c.preset})"


# ---- formatting ----

COLUMNS = ("device", "pass", "variant", "dtype", "batch", "median ms", "p10 ms", "p90 ms", "img/s", "vs eager")


def _cells(row: Row) -> list[str]:
    return [row.device, row.pass_, row.variant, row.dtype, str(row.batch_size), f"{row.median_ms:.3f}",
            f"{row.p10_ms:.3f}", f"{row.p90_ms:.3f}", f"{row.images_per_s:.1f}", f"{row.speedup:.2f}x"]


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]], fmt: str) -> str:
    """Rows of strings as an aligned text table or a GitHub markdown table."""
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def format_result(result: BenchResult, fmt: str = "table") -> str:
    """The time table as ``table`` (aligned text), ``markdown`` or ``json``, with environment and recommendation."""
    if fmt == "json":
        return strict_json.dumps(result.to_dict(), indent=2)
    if fmt not in ("table", "markdown"):
        raise ValueError(f"format must be table, markdown or json, got {fmt!r}")
    env = result.environment
    runtimes = "".join(f", {p} {env[p]}" for p in ("onnxruntime", "openvino", "ai-edge-litert", "executorch")
                       if p in env)
    head = (f"{result.model}: torch {env['torch']}, {env['threads']} threads, {env['cpu']}{runtimes}"
            + (f", {env['cuda_device']}" if "cuda_device" in env else ""))
    lines = [head, "", render_table(COLUMNS, [_cells(r) for r in result.rows], fmt), ""]
    lines += [f"{k.split(':', 1)[1]}: {v}" for k, v in env.items() if k.startswith("runtime:")]
    for device, variant in result.recommended.items():
        row = next(r for r in result.rows if r.device == device and r.pass_ == "forward" and r.variant == variant)
        lines.append(f"recommended float path on {device}: {variant} ({row.speedup:.2f}x eager at batch "
                     f"{row.batch_size})")
    for key, why in result.skipped.items():
        lines.append(f"skipped {key}: {why}")
    lines.append("variants of one device and pass were timed interleaved in the same run (blocks of ~20 ms of "
                 "calls); median per call, p10/p90 of the blocks as spread")
    return "\n".join(lines)


@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op CPU threads (``None``: leave as is)."""
    if n is None:
        yield
        return
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
