"""Every CPU runtime for MobileNet v1 and MobileNet-SSD, ours beside the peers, on this machine (issue 11).

For each of the 16 alpha x resolution variants (tf preset, random weights: speed does not depend on them) and the
SSD (the imported COCO ``detect.tflite``), at each batch size and thread count, every deployment path of
``mobilenet.deploy.paths`` is built and the paths are timed **interleaved in one process** (round-robin blocks,
the order rotated every round), median and p10/p90 of the repeats. Each thread count runs in a process of its own
(PyTorch's and ExecuTorch's thread pools are one per process); exports are cached per variant and batch in
``--cache`` and shared by the thread counts.

* ours: ``eager``, ``folded``, ``channels_last``, ``int8`` (PyTorch), ``onnxruntime``(-int8), ``openvino``
  (f32), ``openvino-bf16``, ``openvino-int8`` (our default: QDQ for a classifier, NNCF for the SSD),
  ``openvino-int8-nncf``, ``tflite``, ``executorch``(-int8);
* peers: ``peer-openvino`` (OpenVINO's own defaults on our ONNX), ``peer-openvino-nncf`` (OpenVINO's own int8
  recipe on it: ``nncf.quantize`` with its defaults, the same calibration images), ``peer-timm`` (eager;
  ``--compile`` adds ``peer-timm-compile``) where timm has the width, ``peer-tflite`` (the interpreter, XNNPACK,
  on Google's own ``.tflite`` where ``--google-dir`` has one: ``mobilenet_v1_{alpha}_{res}_quant.tflite``).

Ratios per row: ``vs fastest peer`` = fastest peer time / the row's time (> 1: faster than every peer), and per
variant the best of ours that keeps accuracy (within 1 point top-1 of float where labels exist; for the SSD,
>= 99 % of the float model's detections found) against the fastest peer, and int8 against float. A runtime that
computes a wrong result (outputs of the wrong shape) is reported, not timed. Accuracy beside speed where real
weights exist: Google's 0.25-128 file (imported) is scored on the shared ImageNet photos in every path (top-1,
agreement with float); the SSD's paths are scored by the detections they share with the float model.

    python benchmarks/cpu_runtimes.py                          # all 16 + SSD, batch 1 and 32, 1 thread and all
    python benchmarks/cpu_runtimes.py --variants mobilenet_v1_100_224 --batches 1 --threads 1 --repeats 7
    python benchmarks/cpu_runtimes.py --tiny                   # a quick check that everything runs (CI)

Prints markdown tables (the CPU named) and writes ``--json``. Timings mean something only on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("MOBILENET_DATA", REPO.parent / "shared" / "data"))

import torch  # noqa: E402

from mobilenet.deploy.bench import _percentile, environment, render_table, time_interleaved  # noqa: E402
from mobilenet.deploy.paths import OURS, PATHS, PEERS, Unavailable, build, nncf_defaults  # noqa: E402

DETECTOR_FORMATS = ("tflite", "onnx", "onnx-int8", "openvino", "openvino-int8", "executorch", "executorch-int8")


def _google_file(google_dir: Path | None, name: str) -> Path | None:
    # mobilenet_v1_025_128 -> mobilenet_v1_0.25_128_quant.tflite (Google's naming)
    if google_dir is None:
        return None
    alpha, res = name.split("_")[-2:]
    f = google_dir / f"mobilenet_v1_{int(alpha) / 100:g}_{res}_quant.tflite"
    return f if f.is_file() else None


def _photos(model: Any, limit: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    folder = DATA / "imagenet" / "images"
    if not folder.is_dir():
        return None
    from mobilenet.deploy.calibration import load_labelled
    from mobilenet.predict import model_preprocessing

    return load_labelled(folder, model_preprocessing(model), num_classes=model.num_classes, limit=limit,
                         progress=False)


def _classifier(name: str, args: argparse.Namespace, batch: int, threads: int) -> dict[str, Any]:
    import statistics

    from mobilenet.zoo import create_model

    google = _google_file(args.google_dir, name)
    torch.manual_seed(0)
    if google is not None:  # real weights: accuracy can be measured beside speed
        from mobilenet.convert import import_model

        model = import_model(google)
    else:
        model = create_model(name, preset="tf", num_classes=1001).eval()
    photos = _photos(model, args.photos) if google is not None else None
    calib = photos[0][0::2] if photos else None
    r = model.config.resolution
    x = torch.randn(batch, 3, r, r, generator=torch.Generator().manual_seed(1))
    folder = args.cache / name / f"batch{batch}"
    folder.mkdir(parents=True, exist_ok=True)
    names = [n for n in (args.paths or OURS + PEERS) if n in PATHS and (args.compile or "compile" not in n)]
    built, skipped = {}, {}
    for n in names:
        try:
            built[n] = build(model, n, batch=batch, threads=threads, folder=folder, calibration=calib,
                             google_file=google)
        except Unavailable as e:
            skipped[n] = str(e)
    fns = {n: b.timed(x) for n, b in built.items()}
    for fn in fns.values():
        fn()
    times = time_interleaved(fns, repeats=args.repeats, warmup=args.warmup, min_sample_s=0.02)
    rows = {n: {"median_ms": statistics.median(t) * 1e3, "p10_ms": _percentile(t, 0.1) * 1e3,
                "p90_ms": _percentile(t, 0.9) * 1e3, "precision": PATHS[n].precision, "peer": PATHS[n].peer,
                "runtime": built[n].description, "times_ms": [v * 1e3 for v in t]} for n, t in times.items()}
    if photos is not None:  # held-out (odd) photos: top-1 and agreement with the float model
        held, labels = photos[0][1::2], photos[1][1::2]
        with torch.inference_mode():
            ref = model(held).argmax(1)
        for n, b in built.items():
            pred = torch.cat([b.predict(c) for c in held.split(32)]).argmax(1)
            rows[n]["top1"] = round((pred == labels).float().mean().item() * 100, 1)
            rows[n]["agreement"] = round((pred == ref).float().mean().item() * 100, 1)
    return {"rows": rows, "skipped": skipped, "weights": str(google) if google else "random (speed only)",
            "held_out_photos": len(photos[0][1::2]) if photos else 0}


def _detector(args: argparse.Namespace, batch: int, threads: int) -> dict[str, Any]:
    """The imported COCO SSD: its decoded network in each runtime beside Google's detect.tflite (the peer)."""
    import statistics

    from PIL import Image

    from mobilenet import runtimes
    from mobilenet.detection.predict import list_images, model_input
    from mobilenet.detection.runtime import RuntimeDetector
    from mobilenet.export import SUFFIXES, export
    from mobilenet.tflite.parity import Parity, match_detections
    from mobilenet.tflite.ssd import import_detect_tflite

    src = DATA / "weights" / "tflite" / "detect.tflite"
    if not src.is_file():
        return {"skipped": f"needs {src}"}
    model = import_detect_tflite(src).eval()
    photos = list_images([DATA / "imagenet" / "images"])[: args.photos]
    images = torch.stack([model_input(Image.open(p), model) for p in photos])
    folder = args.cache / "ssd" / f"batch{batch}"
    folder.mkdir(parents=True, exist_ok=True)
    dets, skipped = {}, {}
    for fmt in DETECTOR_FORMATS if not args.tiny else ("tflite",):
        file = folder / f"{fmt}{SUFFIXES[fmt]}"
        try:
            if not file.exists():
                kw: dict[str, Any] = {"calibration": images[0::2]} if fmt.endswith("int8") else {}
                if fmt in ("tflite", "executorch", "executorch-int8"):
                    kw["batch"] = batch
                if fmt == "onnx":  # the decoded network in ONNX Runtime (no NMS in the graph: as the others)
                    from mobilenet.detection.export import export_network

                    file.write_bytes(export_network(model, opset=18).SerializeToString())
                elif fmt == "onnx-int8":  # its convs in int8 on the file's recorded grids, no NMS either
                    from mobilenet.detection.export import export_detector_int8

                    export_detector_int8(model, file, images[0::2], nms=False)
                else:
                    export(model, file, format=fmt, **kw)
            options = {"precision": "f32"} if fmt.startswith("openvino") else {}
            predictor = runtimes.load(file, threads=threads, **options)
            dets[fmt] = RuntimeDetector(_with_metadata(predictor, model) if fmt == "onnx" else predictor)
        except (runtimes.RuntimeMissingError, ValueError) as e:
            skipped[fmt] = str(e).splitlines()[0]
    dets["peer-tflite"] = RuntimeDetector(runtimes.load(src, threads=threads))
    if "onnx" in dets and not args.tiny:  # OpenVINO on our float ONNX: its defaults, and its own int8 recipe
        try:
            dets["peer-openvino"] = RuntimeDetector(_with_metadata(
                runtimes.load(folder / "onnx.onnx", runtime="openvino", threads=threads), model))
            dets["peer-openvino-nncf"] = RuntimeDetector(_with_metadata(
                runtimes.load(nncf_defaults(folder / "onnx.onnx", images[0::2], folder / "peer-nncf.xml"),
                              threads=threads), model))
        except (runtimes.RuntimeMissingError, ValueError, Unavailable) as e:
            skipped["peer-openvino"] = str(e).splitlines()[0]
    for n, d in list(dets.items()):  # a runtime that computes a wrong result is reported, not timed
        try:
            d.detect(images[:1])
        except ValueError as e:
            shapes = ", ".join(str(tuple(o.shape)) for o in d.predictor(images[:1]))
            skipped[n] = f"a wrong result: outputs of shape {shapes} for one image ({e})"
            del dets[n]
    x = images[:batch] if len(images) >= batch else images.repeat(batch, 1, 1, 1)[:batch]
    fns = {"eager": lambda: model(x)}
    for n, d in dets.items():
        fed = d.predictor.feed(x)
        fns[n] = (lambda d=d, fed=fed: d.predictor.run(fed)) if d.predictor.input_shape[0] in (None, batch) else \
            (lambda d=d: d.predictor(x))
    with torch.inference_mode():
        for fn in fns.values():
            fn()
        times = time_interleaved(fns, repeats=args.repeats, warmup=args.warmup, min_sample_s=0.02)
    rows = {n: {"median_ms": statistics.median(t) * 1e3, "p10_ms": _percentile(t, 0.1) * 1e3,
                "p90_ms": _percentile(t, 0.9) * 1e3, "peer": n.startswith("peer"), "times_ms": [v * 1e3 for v in t],
                "precision": ("int8" if n.endswith("int8") or n in ("peer-tflite", "peer-openvino-nncf") else
                              "default" if n == "peer-openvino" else "float32")}
            for n, t in times.items()}
    with torch.inference_mode():  # the float model's detections, once for every path
        refs = [model.detect(images[i:i + 1])[0] for i in range(len(images))]
    for n, d in dets.items():  # detections of the float model (score >= 0.5) found at IoU >= 0.5
        found = Parity()
        for i, ref in enumerate(refs):
            match_detections(ref, d.detect(images[i:i + 1])[0], found, photos[i].name, min_iou=0.5, score_tol=1.0)
        rows[n]["detections_found"] = f"{found.matched}/{found.references}"
    return {"rows": rows, "skipped": skipped, "weights": str(src), "photos": len(images)}


def _with_metadata(predictor: Any, model: Any) -> Any:
    # export_network's bare ONNX graph carries no metadata: give it the SSD's, as the other exports carry
    from mobilenet.export.metadata import artifact_metadata

    predictor.metadata.update(artifact_metadata(model), outputs=["decoded", "logits"])
    return predictor


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One thread count, in this process: every variant and batch size."""
    threads = args.threads[0]
    torch.set_num_threads(threads)
    if any("timm" in p for p in (args.paths or PEERS)):
        try:  # timm's model code without torchvision (for the peer-timm rows)
            from benchmarks.timm_peer import TORCHVISION_MODULES, import_timm

            import_timm()
            # timm holds what it needs; the torchvision stand-ins must not stay visible to torch.onnx's exporter,
            # which would try (and loudly fail) to register torchvision's ops from them
            for name in TORCHVISION_MODULES:
                if type(sys.modules.get(name)).__name__ == "MagicMock":
                    del sys.modules[name]
        except ImportError:
            pass
    out: dict[str, Any] = {"threads": threads, "environment": environment(), "variants": {}}
    for batch in args.batches:
        for name in args.variants:
            print(f"[{threads} thread(s)] {name} batch {batch}", file=sys.stderr, flush=True)
            out["variants"][f"{name}@{batch}"] = (_detector(args, batch, threads) if name == "ssd" else
                                                  _classifier(name, args, batch, threads))
    return out


def _keeps_accuracy(row: dict[str, Any], float_top1: float | None) -> bool:
    # as export --target cpu decides: within 1 point top-1 of float where labels exist; an SSD path finds >= 99 %
    # of the float model's detections; random weights: speed alone
    if "detections_found" in row:
        found, total = (int(v) for v in row["detections_found"].split("/"))
        return found >= 0.99 * total
    return float_top1 is None or row.get("top1") is None or row["top1"] >= float_top1 - 1.0


def _summary(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per variant: our fastest path that keeps accuracy against the fastest peer, and int8 against float."""
    ours = {n: r for n, r in rows.items() if not r["peer"]}
    peers = {n: r for n, r in rows.items() if r["peer"]}
    float_top1 = max((r["top1"] for r in ours.values() if r["precision"] == "float32" and "top1" in r), default=None)
    kept = {n: r for n, r in ours.items() if _keeps_accuracy(r, float_top1)}
    best = min(kept, key=lambda n: kept[n]["median_ms"]) if kept else None
    out: dict[str, Any] = {"best_ours": best}
    if peers and best:
        fastest_peer = min(peers, key=lambda n: peers[n]["median_ms"])
        out.update(fastest_peer=fastest_peer,
                   ours_vs_peer=round(peers[fastest_peer]["median_ms"] / ours[best]["median_ms"], 3))
    floats = [r["median_ms"] for r in ours.values() if r["precision"] == "float32"]
    int8s = [r["median_ms"] for r in ours.values() if r["precision"] == "int8"]
    if floats and int8s:
        out["int8_vs_float"] = round(min(floats) / min(int8s), 3)  # > 1: int8 faster
    return out


def _ratio_spread(peer: list[float], ours: list[float]) -> str:
    """The median ratio peer/ours and its p10-p90 over the interleaved rounds (round i of both ran side by side)."""
    import statistics

    ratios = [p / o for p, o in zip(peer, ours, strict=False)]
    return f"{statistics.median(ratios):.2f}x ({_percentile(ratios, 0.1):.2f}-{_percentile(ratios, 0.9):.2f})"


def overview(results: list[dict[str, Any]]) -> str:
    """One row per variant, batch and thread count: our fastest path that keeps accuracy against the fastest peer."""
    header = ["variant", "batch", "threads", "ours (fastest that keeps accuracy)", "ms", "fastest peer", "ms",
              "ours vs peer (p10-p90)", "int8 vs float"]
    table = []
    for res in results:
        for key, v in res["variants"].items():
            if "rows" not in v:
                continue
            rows, s = v["rows"], _summary(v["rows"])
            name, batch = key.rsplit("@", 1)
            best, peer = s.get("best_ours"), s.get("fastest_peer")
            table.append([name, batch, str(res["threads"]), best or "-",
                          f"{rows[best]['median_ms']:.3f}" if best else "-", peer or "-",
                          f"{rows[peer]['median_ms']:.3f}" if peer else "-",
                          _ratio_spread(rows[peer]["times_ms"], rows[best]["times_ms"]) if best and peer else "-",
                          f"{s['int8_vs_float']:.2f}x" if "int8_vs_float" in s else "-"])
    return render_table(header, table, "markdown")


def report(results: list[dict[str, Any]]) -> str:
    lines = []
    for res in results:
        env = res["environment"]
        lines.append(f"### {res['threads']} thread(s): {env['cpu']} ({env['cpu_capability']}), torch {env['torch']}"
                     + "".join(f", {p} {env[p]}" for p in ("onnxruntime", "openvino", "ai-edge-litert", "executorch")
                               if p in env))
        for key, v in res["variants"].items():
            if "rows" not in v:
                lines.append(f"\n{key}: skipped ({v.get('skipped')})")
                continue
            rows = v["rows"]
            peers = [r["median_ms"] for r in rows.values() if r["peer"]]
            fastest_peer = min(peers) if peers else None
            header = ["path", "precision", "median ms", "p10-p90 ms", "vs fastest peer", "top-1 %", "agree %",
                      "detections"]
            table = [[n, r["precision"], f"{r['median_ms']:.3f}", f"{r['p10_ms']:.3f}-{r['p90_ms']:.3f}",
                      f"{fastest_peer / r['median_ms']:.2f}x" if fastest_peer else "-",
                      str(r.get("top1", "-")), str(r.get("agreement", "-")), str(r.get("detections_found", "-"))]
                     for n, r in sorted(rows.items(), key=lambda kv: kv[1]["median_ms"])]
            s = _summary(rows)
            v["summary"] = s
            lines += ["", f"**{key}** ({v['weights']}): fastest of ours that keeps accuracy {s.get('best_ours')}"
                      + (f", {s['ours_vs_peer']:.2f}x the fastest peer ({s['fastest_peer']})" if "ours_vs_peer" in s
                         else "") + (f"; int8 {s['int8_vs_float']:.2f}x float" if "int8_vs_float" in s else ""),
                      "", render_table(header, table, "markdown")]
            lines += [f"- not measured: {n}: {why}" for n, why in v["skipped"].items()]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    from mobilenet.zoo import list_models

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", type=lambda s: s.split(","), default=None,
                    help="comma-separated names (default: the 16 variants and ssd)")
    ap.add_argument("--batches", type=lambda s: [int(v) for v in s.split(",")], default=[1, 32])
    ap.add_argument("--threads", type=lambda s: [int(v) for v in s.split(",")], default=None,
                    help="comma-separated thread counts, one process each (default: 1 and all cores)")
    ap.add_argument("--paths", type=lambda s: s.split(","), default=None, help="subset of the deployment paths")
    ap.add_argument("--compile", action="store_true", help="add the torch.compile'd timm peer (slow to compile)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--photos", type=int, default=100, help="shared ImageNet photos for accuracy (half calibrate)")
    ap.add_argument("--google-dir", type=Path, default=DATA / "weights" / "tflite",
                    help="Google's quantized .tflite files (peer-tflite rows, and real weights for accuracy)")
    ap.add_argument("--cache", type=Path, default=None, help="folder for the exported files (default: temporary)")
    ap.add_argument("--tiny", action="store_true", help="one small variant, batch 1, 1 thread, few repeats")
    ap.add_argument("--json", help="write every number here")
    ap.add_argument("--markdown", help="write the printed tables here too (e.g. docs/cpu_runtimes.md)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.tiny and not args.worker:
        args.variants = args.variants or ["mobilenet_v1_025_128"]
        args.batches, args.threads, args.repeats, args.warmup = [1], args.threads or [1], 2, 0
        args.photos = min(args.photos, 8)
        args.paths = args.paths or ["eager", "onnxruntime", "onnxruntime-int8", "openvino", "tflite", "peer-openvino",
                                    "peer-tflite"]
    args.variants = args.variants or [*list_models(), "ssd"]
    args.threads = args.threads or sorted({1, os.cpu_count() or 1})
    if args.worker:
        print(json.dumps(worker(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        args.cache = args.cache or Path(tmp)
        results = []
        for threads in args.threads:  # one process per thread count
            cmd = [sys.executable, __file__, "--worker", "--threads", str(threads), "--cache", str(args.cache),
                   "--variants", ",".join(args.variants), "--batches", ",".join(map(str, args.batches)),
                   "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--photos", str(args.photos),
                   "--google-dir", str(args.google_dir)] + (["--tiny"] if args.tiny else [])
            cmd += (["--paths", ",".join(args.paths)] if args.paths else []) + (["--compile"] if args.compile else [])
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
            if proc.returncode != 0:
                sys.exit(f"the {threads}-thread run failed (exit {proc.returncode}); its log is above")
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    text = overview(results) + "\n\n" + report(results)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(f"<!-- made by: python benchmarks/cpu_runtimes.py {' '.join(sys.argv[1:])} -->\n"
                                       + text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
