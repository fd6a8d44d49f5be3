"""The fastest way to run a classifier on this CPU that keeps its accuracy (``export --target cpu``, ``bench
--recommend``).

CPUs differ (AMX or VNNI, bf16 or not, cores and caches), so the answer is measured, not assumed: every
deployment path of :mod:`mobilenet.deploy.paths` that runs here is built for the model, timed interleaved in
one process (the same batch and threads for all), and scored on held-out images. The choice:

* the fastest float32 path is the reference ``float``;
* a reduced-precision path (int8, bf16) may replace it only when it is **faster** and keeps its accuracy:
  top-1 within ``tolerance`` points (default 1) of the float reference on labelled held-out images, or,
  without labels, top-1 agreement with the float reference of at least ``min_agreement`` (default 99 %);
  calibration and held-out images never overlap (even / odd images of the source);
* otherwise float is chosen, and the reason is said (slower, or which accuracy it lost).
"""

from __future__ import annotations

import os
import statistics
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import strict_json
from ..model import MobileNetV1
from .bench import _percentile, environment, render_table, time_interleaved
from .paths import OURS, PATHS, Unavailable, build


@dataclass
class Candidate:
    """One path measured for the choice: latency (ms per call of ``batch`` images), accuracy on held-out images."""

    name: str
    precision: str
    description: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    top1: float | None  # % on the held-out images (None without labels)
    agreement: float  # % of held-out images with the float reference's top-1 class
    verdict: str = ""


@dataclass
class Recommendation:
    """The measured candidates, the path chosen and why, and where it was measured."""

    choice: str
    reason: str
    batch: int
    threads: int
    held_out: int
    candidates: list[Candidate]
    environment: dict[str, Any]
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["candidates"] = [asdict(c) for c in self.candidates]
        return d


def target_images(model: MobileNetV1, source: str | os.PathLike[str], *, limit: int = 200,
                  progress: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images (preprocessed as the model's weights say) and, where the source labels them (class folders, or
    ImageNet file names for a 1000/1001-way model), their labels; unlabelled images otherwise."""
    from ..predict import model_preprocessing
    from ..weights import weights_info
    from .calibration import load_images, load_labelled

    pre = model_preprocessing(model)
    try:
        return load_labelled(source, pre, num_classes=model.num_classes, class_names=weights_info(model).classes,
                             limit=limit, progress=progress)
    except ValueError:  # no labels to be had: agreement with float decides
        return load_images(source, pre, limit=limit, progress=progress)[0], None


def split_held_out(images: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor,
                                                                               torch.Tensor | None]:
    """(calibration, held-out images, held-out labels): even and odd images, never the same one in both."""
    if len(images) < 2:
        raise ValueError(f"need at least 2 images (half calibrate, half are held out), got {len(images)}")
    return images[0::2], images[1::2], (labels[1::2] if labels is not None else None)


def recommend_cpu(
    model: MobileNetV1,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    batch: int = 1,
    threads: int | None = None,
    paths: list[str] | None = None,
    tolerance: float = 1.0,
    min_agreement: float = 99.0,
    repeats: int = 20,
    warmup: int = 3,
    folder: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Recommendation:
    """Measure ``paths`` (default: all of ours that build in seconds) for ``model`` and choose (module docstring).

    ``images`` ``(N, C, H, W)`` normalised as the model takes them, ``labels`` ``(N,)`` in its class indices or
    None; even images calibrate the int8 paths, odd ones score every path. ``folder`` keeps the built files
    (default: a temporary folder), so the chosen one can be copied out (:func:`write_choice`).
    """
    if not isinstance(model, MobileNetV1):
        raise TypeError(f"recommend_cpu expects a MobileNetV1 classifier, got {type(model).__name__}")
    names = paths or [n for n in OURS if not PATHS[n].slow]
    unknown = [n for n in names if n not in PATHS]
    if unknown:
        raise ValueError(f"unknown path(s) {', '.join(unknown)} (choose from {', '.join(PATHS)})")
    threads = threads or torch.get_num_threads()
    calibration, held_out, held_labels = split_held_out(images, labels)
    x = held_out[:batch] if len(held_out) >= batch else held_out.repeat(batch // len(held_out) + 1, 1, 1, 1)[:batch]
    work = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="mobilenet-target-"))
    built, skipped = {}, {}
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for name in names:
            try:
                built[name] = build(model, name, batch=batch, threads=threads, folder=work, calibration=calibration)
            except Unavailable as e:
                skipped[name] = str(e)
        if "eager" not in built:
            built["eager"] = build(model, "eager", folder=work)
        with torch.inference_mode():
            reference = model.eval()(held_out).argmax(1)
        scores = {}
        for name, b in built.items():
            pred = torch.cat([b.predict(chunk) for chunk in held_out.split(32)]).argmax(1)
            top1 = None if held_labels is None else (pred == held_labels).float().mean().item() * 100
            scores[name] = (top1, (pred == reference).float().mean().item() * 100)
        fns = {name: b.timed(x) for name, b in built.items()}
        for fn in fns.values():
            fn()
        times = time_interleaved(fns, repeats=repeats, warmup=warmup, min_sample_s=0.02, progress=progress,
                                 desc="candidates")
    finally:
        torch.set_num_threads(old_threads)
    candidates = [Candidate(n, PATHS[n].precision, built[n].description, statistics.median(t) * 1e3,
                            _percentile(t, 0.1) * 1e3, _percentile(t, 0.9) * 1e3, *scores[n])
                  for n, t in times.items()]
    choice, reason = _choose(candidates, tolerance, min_agreement, labelled=held_labels is not None)
    rec = Recommendation(choice, reason, batch, threads, len(held_out), candidates, environment(), skipped)
    rec.environment["folder"] = str(work)
    rec.environment["files"] = {n: str(b.file) for n, b in built.items() if b.file is not None}
    return rec


def _choose(candidates: list[Candidate], tolerance: float, min_agreement: float, *, labelled: bool
            ) -> tuple[str, str]:
    floats = [c for c in candidates if c.precision == "float32"]
    best_float = min(floats, key=lambda c: c.median_ms)
    for c in floats:
        c.verdict = "fastest float" if c is best_float else "float"
    ref_top1 = best_float.top1
    eligible = []
    for c in candidates:
        if c.precision == "float32":
            continue
        if c.median_ms >= best_float.median_ms:
            c.verdict = f"slower than float {best_float.name} ({c.median_ms:.3f} vs {best_float.median_ms:.3f} ms)"
        elif labelled and c.top1 is not None and ref_top1 is not None and c.top1 < ref_top1 - tolerance:
            c.verdict = f"loses {ref_top1 - c.top1:.1f} points top-1 (> {tolerance:g})"
        elif not labelled and c.agreement < min_agreement:
            c.verdict = f"agrees with float on {c.agreement:.1f}% of images (< {min_agreement:g}%)"
        else:
            c.verdict = "faster, accuracy kept"
            eligible.append(c)
    if not eligible:
        reasons = "; ".join(f"{c.name}: {c.verdict}" for c in candidates if c.precision != "float32")
        return best_float.name, (f"{best_float.name} is the fastest float path and no reduced-precision path is "
                                 f"both faster and as accurate ({reasons or 'none measured'})")
    best = min(eligible, key=lambda c: c.median_ms)
    kept = (f"top-1 {best.top1:.1f}% vs float {ref_top1:.1f}%" if labelled and best.top1 is not None else
            f"top-1 agreement with float {best.agreement:.1f}%")
    return best.name, (f"{best.name} is {best_float.median_ms / best.median_ms:.2f}x the fastest float path "
                       f"({best_float.name}) with its accuracy kept ({kept})")


def format_recommendation(rec: Recommendation, fmt: str = "table") -> str:
    """The candidates table (fastest first) and the choice, as text or markdown; ``json`` for the whole record."""
    if fmt == "json":
        return strict_json.dumps(rec.to_dict(), indent=2)
    header = ("path", "precision", "median ms", "p10 ms", "p90 ms", "top-1 %", "agree %", "verdict")
    rows = [[c.name, c.precision, f"{c.median_ms:.3f}", f"{c.p10_ms:.3f}", f"{c.p90_ms:.3f}",
             "-" if c.top1 is None else f"{c.top1:.1f}", f"{c.agreement:.1f}", c.verdict]
            for c in sorted(rec.candidates, key=lambda c: c.median_ms)]
    env = rec.environment
    lines = [f"{env['cpu']} ({env['cpu_capability']}), batch {rec.batch}, {rec.threads} thread(s), "
             f"{rec.held_out} held-out images; candidates timed interleaved in one run",
             "", render_table(header, rows, fmt), "", f"chosen: {rec.choice}: {rec.reason}"]
    lines += [f"not measured: {k}: {v}" for k, v in rec.skipped.items()]
    return "\n".join(lines)


def write_choice(rec: Recommendation, model: MobileNetV1, folder: str | os.PathLike[str]) -> Path:
    """Write the chosen path's file into ``folder`` (the exported file as measured: an OpenVINO IR with its
    ``.bin``, the int8 model as TorchScript; a float PyTorch path as the weights file, BN folded but for ``eager``)
    and ``target.json`` (the record) beside it; returns the file written."""
    from ..checkpoint import atomic_write, save
    from .fold import fold_bn

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = rec.choice
    src = rec.environment["files"].get(name)
    if src is not None:
        src = Path(src)
        dest = folder / f"{name}{src.suffix}"
        companions = [(src.with_suffix(".bin"), dest.with_suffix(".bin"))] if src.suffix == ".xml" else []
        for a, b in [*companions, (src, dest)]:  # an IR's .bin before its .xml
            with atomic_write(b) as f:
                f.write(a.read_bytes())
    else:
        dest = folder / f"{name}.safetensors"
        save(model if name == "eager" else fold_bn(model), dest)
    with atomic_write(folder / "target.json", "w") as f:
        strict_json.dump({**rec.to_dict(), "written": str(dest)}, f, indent=2)
    return dest
