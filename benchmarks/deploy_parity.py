"""Deploy to a phone, proven: every export format of Google's MobileNet v1 0.25-128 (imported) and of its COCO SSD,
run in its own runtime on the shared photos beside PyTorch (issue 10's table).

Classifier rows (100 shared ImageNet photos): max |difference| of the logits to PyTorch (float formats), top-1, top-1
agreement with the float model, file size; int8 formats calibrate on the even photos and are scored on all. A
quantized import keeps its recorded grids: all of them in tflite-int8; the activations' and the weights' (with the
file's zero points) in onnx-int8; the activations' and each weight channel's scale where it fits a symmetric int8
grid in executorch-int8 and openvino-int8 (its default method, ``qdq``); none in openvino-int8-nncf (``--method
nncf``). ``tflite-int8`` is also compared with Google's own file: identical uint8 outputs on how many photos. A
second table takes the same model with its grids removed (a float model, as if trained here): the int8 formats
calibrated on the even photos, scored on the odd ones (what tests/test_export_int8.py checks), tflite-int8 in
TF Lite's int8 scheme (its default) and in Google's 2018 per-tensor uint8 one. Core ML is converted and
inspected, not run (Apple platforms only). Detector rows (108 shared photos): max |difference| of the decoded boxes
and logits to PyTorch, and the detections (score >= 0.5) each file finds at IoU >= 0.5 of the float model's
(onnx and onnx-int8 end in their NMS: :mod:`mobilenet.detection.export`); ``tflite-int8`` against Google's
``detect.tflite`` (identical outputs on how many photos). The SSD with its grids removed: its int8 formats
calibrated on every 4th photo, scored on the other 81 (as tests/test_export_int8.py).

    python benchmarks/deploy_parity.py [--latency] [--threads 1] [--json out.json]

``--latency`` adds a column: ms per image at batch 1, every file timed interleaved in one run (only meaningful
on a quiet machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("MOBILENET_DATA", REPO.parent / "shared" / "data"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

INT8_CLASSIFIER_FORMATS = ("onnx-int8", "tflite-int8", "executorch-int8", "openvino-int8", "openvino-int8-nncf")
CLASSIFIER_FORMATS = ("onnx", "torchscript", "torch-export", "tflite", "tflite-nhwc", "executorch", "openvino",
                      "openvino-bf16", "coreml", *INT8_CLASSIFIER_FORMATS)
WITHOUT_GRIDS_FORMATS = (*INT8_CLASSIFIER_FORMATS, "tflite-int8-per-tensor")
DETECTOR_FORMATS = ("onnx", "tflite", "executorch", "openvino", "onnx-int8", "tflite-int8", "openvino-int8",
                    "executorch-int8")
DETECTOR_INT8_FORMATS = ("onnx-int8", "tflite-int8", "tflite-int8-per-tensor", "executorch-int8", "openvino-int8")
BASES = {"tflite-nhwc": "tflite", "openvino-bf16": "openvino", "openvino-int8-nncf": "openvino-int8",
         "tflite-int8-per-tensor": "tflite-int8"}


def _export(model: Any, fmt: str, folder: Path, calibration: torch.Tensor) -> tuple[Path, dict[str, Any]]:
    from mobilenet.export import INT8, SUFFIXES, export
    from mobilenet.export.metadata import is_detector

    base = BASES.get(fmt, fmt)
    path = folder / f"{fmt}{SUFFIXES[base]}"
    kw: dict[str, Any] = {"layout": "NHWC"} if fmt == "tflite-nhwc" else {}
    if fmt == "openvino-int8-nncf":
        kw["method"] = "nncf"
    if fmt == "tflite-int8-per-tensor":  # Google's 2018 scheme: uint8 kernels and activations
        kw["scheme"] = "per-tensor"
    if base in INT8 and (base != "tflite-int8" or not _has_grids(model)):  # else: the recorded grids, no images
        kw["calibration"] = calibration
    if is_detector(model) and base.startswith("onnx"):  # the detector's ONNX ends in its NMS
        from mobilenet.detection.export import export_detector_int8, export_detector_onnx

        if base == "onnx":
            export_detector_onnx(model, path, nms=True)
        else:
            export_detector_int8(model, path, calibration, nms=True)
    else:
        export(model, path, format=base, **kw)
    options = {"precision": "f32"} if base.startswith("openvino") and fmt != "openvino-bf16" else {}
    if fmt == "openvino-bf16":
        options = {"precision": "bf16"}
    return path, options


def _export_or_skip(model: Any, fmt: str, folder: Path, calibration: torch.Tensor, rows: list[dict[str, Any]],
                    what: str) -> tuple[Path, dict[str, Any]] | None:
    """:func:`_export`, or a ``skipped`` row (a runtime not installed, a format the model cannot take)."""
    print(f"{what}: {fmt}", file=sys.stderr, flush=True)
    try:
        return _export(model, fmt, folder, calibration)
    except (ImportError, ValueError) as e:
        rows.append({"format": fmt, "skipped": str(e).splitlines()[0]})
        return None


def _ssd_and_photos(*, grids: bool = True) -> tuple[Any, list[Path], torch.Tensor]:
    """The imported COCO SSD (``grids=False``: its recorded grids removed, as a float model trained here) and the
    108 shared photos as its inputs."""
    from PIL import Image

    from mobilenet.detection.predict import list_images, model_input
    from mobilenet.tflite.ssd import import_detect_tflite
    from mobilenet.weights import weights_info

    model = import_detect_tflite(DATA / "weights" / "tflite" / "detect.tflite").eval()
    if not grids:
        model.weights_info = weights_info(model).replace(quantization=None)
    photos = list_images([DATA / "detection" / "voc" / "VOCdevkit", DATA / "imagenet" / "images"])
    return model, photos, torch.stack([model_input(Image.open(p), model) for p in photos])


def _has_grids(model: Any) -> bool:
    from mobilenet.weights import weights_info

    return weights_info(model).quantization is not None


def classifier(args: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    from mobilenet import runtimes
    from mobilenet.convert import import_model
    from mobilenet.deploy.calibration import load_labelled
    from mobilenet.export import file_size
    from mobilenet.export.coreml import inspect_coreml
    from mobilenet.predict import model_preprocessing

    src = DATA / "weights" / "tflite" / "mobilenet_v1_0.25_128_quant.tflite"
    model = import_model(src)
    x, y = load_labelled(DATA / "imagenet" / "images", model_preprocessing(model), num_classes=1001, progress=False)
    with torch.inference_mode():
        ref = model(x)
    google = runtimes.load(src, threads=args.threads)
    g_out = google(x)
    rows = [{"format": "Google's .tflite (reference)", "runtime": _runtime(google), "max_abs_diff": None,
             "top1": _pct(g_out, y), "agreement": _pct(g_out, ref.argmax(1)),
             "size_mb": round(src.stat().st_size / 1e6, 3)}]
    timed: dict[str, Any] = {"google": lambda: google(x[:1])}
    for fmt in CLASSIFIER_FORMATS:
        exported = _export_or_skip(model, fmt, folder, x[0::2], rows, "classifier")
        if exported is None:
            continue
        path, options = exported
        row: dict[str, Any] = {"format": fmt, "size_mb": round(file_size(path) / 1e6, 3)}
        if fmt == "coreml":
            info = inspect_coreml(path)
            row.update(runtime="not run: Core ML predicts only on Apple platforms (inspected: "
                               f"{len(info['class_labels'])} labels, {sum(info['ops'].values())} ops)")
            rows.append(row)
            continue
        p = runtimes.load(path, threads=args.threads, **options)
        out = p(x)
        row.update(runtime=_runtime(p), top1=_pct(out, y), agreement=_pct(out, ref.argmax(1)),
                   max_abs_diff=float((out - ref).abs().max()) if _float(fmt) else None)
        if fmt == "tflite-int8":
            row["identical_to_google"] = int((g_out == out).all(dim=1).sum())
        rows.append(row)
        timed[fmt] = lambda p=p: p(x[:1])
    if args.latency:
        _latency(rows, timed, args)
    return rows


def classifier_without_grids(args: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    """The int8 formats of the 0.25-128 import with its recorded grids removed: calibrated on the even photos,
    scored on the odd ones."""
    from mobilenet import runtimes
    from mobilenet.convert import import_model
    from mobilenet.deploy.calibration import load_labelled
    from mobilenet.export import file_size
    from mobilenet.predict import model_preprocessing
    from mobilenet.weights import weights_info

    model = import_model(DATA / "weights" / "tflite" / "mobilenet_v1_0.25_128_quant.tflite")
    model.weights_info = weights_info(model).replace(quantization=None)
    x, y = load_labelled(DATA / "imagenet" / "images", model_preprocessing(model), num_classes=1001, progress=False)
    odd, labels = x[1::2], y[1::2]
    with torch.inference_mode():
        ref = model(odd)
    rows = [{"format": "float (PyTorch)", "runtime": "torch", "top1": _pct(ref, labels), "agreement": 100.0}]
    sub = folder / "without-grids"
    sub.mkdir()
    for fmt in WITHOUT_GRIDS_FORMATS:
        exported = _export_or_skip(model, fmt, sub, x[0::2], rows, "classifier without grids")
        if exported is None:
            continue
        path, options = exported
        p = runtimes.load(path, threads=args.threads, **options)
        out = p(odd)
        rows.append({"format": fmt, "runtime": _runtime(p), "top1": _pct(out, labels),
                     "agreement": _pct(out, ref.argmax(1)), "size_mb": round(file_size(path) / 1e6, 3)})
    return rows


def detector(args: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    from mobilenet import runtimes
    from mobilenet.detection.runtime import RuntimeDetector
    from mobilenet.export import file_size

    src = DATA / "weights" / "tflite" / "detect.tflite"
    model, photos, x = _ssd_and_photos()
    net = model.decoded()
    with torch.inference_mode():
        ref_raw = [net(x[i:i + 1]) for i in range(len(x))]
        ref = [model.detect(x[i:i + 1])[0] for i in range(len(x))]
    google = RuntimeDetector(runtimes.load(src, threads=args.threads))
    g_det = [google.detect(x[i:i + 1])[0] for i in range(len(x))]
    rows = [_det_row("Google's detect.tflite (reference)", google, g_det, ref, photos, src.stat().st_size)]
    timed: dict[str, Any] = {"google": lambda: google(x[:1])}
    for fmt in DETECTOR_FORMATS:
        exported = _export_or_skip(model, fmt, folder, x[0::4], rows, "detector")
        if exported is None:
            continue
        path, options = exported
        det = RuntimeDetector(runtimes.load(path, threads=args.threads, **options))
        dets = [det.detect(x[i:i + 1])[0] for i in range(len(x))]
        row = _det_row(fmt, det, dets, ref, photos, file_size(path))
        if det.kind == "decoded" and _float(fmt):
            row["max_abs_diff"] = max(float((o - r).abs().max()) for i in range(len(x))
                                      for o, r in zip(det.predictor(x[i:i + 1]), ref_raw[i], strict=True))
        if fmt == "tflite-int8":
            row["identical_to_google"] = sum(
                torch.equal(a.scores, b.scores) and torch.equal(a.labels, b.labels) and torch.equal(a.boxes, b.boxes)
                for a, b in zip(dets, g_det, strict=True))
        rows.append(row)
        timed[fmt] = lambda det=det: det.predictor(x[:1])
    if args.latency:
        _latency(rows, timed, args)
    return rows


def detector_without_grids(args: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    """The int8 formats of the COCO SSD with its recorded grids removed: calibrated on every 4th shared photo,
    scored on the other 81 against the float model's detections."""
    from mobilenet import runtimes
    from mobilenet.detection.runtime import RuntimeDetector
    from mobilenet.export import file_size

    model, photos, x = _ssd_and_photos(grids=False)
    held = [i for i in range(len(x)) if i % 4]
    with torch.inference_mode():
        ref = [model.detect(x[i:i + 1])[0] for i in held]
    sub = folder / "ssd-without-grids"
    sub.mkdir()
    rows = []
    for fmt in DETECTOR_INT8_FORMATS:
        exported = _export_or_skip(model, fmt, sub, x[0::4], rows, "detector without grids")
        if exported is None:
            continue
        path, options = exported
        det = RuntimeDetector(runtimes.load(path, threads=args.threads, **options))
        dets = [det.detect(x[i:i + 1])[0] for i in held]
        rows.append(_det_row(fmt, det, dets, ref, [photos[i] for i in held], file_size(path)))
    return rows


def _det_row(name: str, det: Any, dets: list[Any], ref: list[Any], photos: list[Path], size: int) -> dict[str, Any]:
    from mobilenet.tflite.parity import Parity, match_detections

    found = Parity()
    for p, ours, theirs in zip(photos, dets, ref, strict=True):
        match_detections(theirs, ours, found, p.name, min_score=0.5, min_iou=0.5, score_tol=1.0)
    return {"format": name, "runtime": _runtime(det.predictor), "size_mb": round(size / 1e6, 3),
            "detections_found": f"{found.matched}/{found.references}"}


def _float(fmt: str) -> bool:
    return "-int8" not in fmt and fmt != "openvino-bf16"


def _runtime(predictor: Any) -> str:
    return predictor.describe().split(": ", 1)[0]  # the runtime, its version and kernels, without the file


def _pct(out: torch.Tensor, target: torch.Tensor) -> float:
    return round((out.argmax(1) == target).float().mean().item() * 100, 1)


def _latency(rows: list[dict[str, Any]], timed: dict[str, Any], args: argparse.Namespace) -> None:
    from mobilenet.deploy.bench import time_interleaved

    for fn in timed.values():
        fn()
    times = time_interleaved(timed, repeats=args.repeats, warmup=2, min_sample_s=0.02)
    for row in rows:
        key = "google" if "reference" in row["format"] else row["format"]
        if key in times:
            row["latency_ms"] = round(statistics.median(times[key]) * 1e3, 3)


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    from mobilenet.deploy.bench import render_table

    def cell(row: dict[str, Any], key: str) -> str:
        v = row.get(key)
        return "-" if v is None else f"{v:.1e}" if key == "max_abs_diff" else str(v)

    body = [[cell(r, k) for _, k in columns] if "skipped" not in r else [r["format"], f"skipped: {r['skipped']}"]
            + ["-"] * (len(columns) - 2) for r in rows]
    return render_table([c for c, _ in columns], body, "markdown")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--latency", action="store_true", help="add ms per image (batch 1), interleaved: quiet machine")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", help="write every number here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not (DATA / "weights" / "tflite").is_dir():
        sys.exit(f"needs the shared data ({DATA}; set MOBILENET_DATA)")
    with tempfile.TemporaryDirectory() as tmp:
        cls_rows = classifier(args, Path(tmp))
        plain_rows = classifier_without_grids(args, Path(tmp))
        det_rows = detector(args, Path(tmp))
        det_plain_rows = detector_without_grids(args, Path(tmp))
    cols = [("format", "format"), ("runtime", "runtime"), ("max abs diff to PyTorch", "max_abs_diff"),
            ("top-1 %", "top1"), ("agreement with float %", "agreement"), ("size MB", "size_mb")]
    extra = [("identical to Google's file", "identical_to_google")] + (
        [("latency ms", "latency_ms")] if args.latency else [])
    print(f"MobileNet v1 0.25-128 (Google's uint8 file, imported), 100 shared ImageNet photos, "
          f"{args.threads} thread(s)\n")
    print(table(cls_rows, cols + extra))
    print("\nThe same model with its recorded grids removed (a float model), int8 calibrated on the 50 even photos, "
          "scored on the 50 odd ones\n")
    print(table(plain_rows, [("format", "format"), ("runtime", "runtime"), ("top-1 %", "top1"),
                             ("agreement with float %", "agreement"), ("size MB", "size_mb")]))
    dcols = [("format", "format"), ("runtime", "runtime"), ("max abs diff to PyTorch", "max_abs_diff"),
             ("detections found (score >= 0.5, IoU >= 0.5)", "detections_found"), ("size MB", "size_mb")]
    print("\nCOCO SSD MobileNet v1 (detect.tflite, imported), 108 shared photos\n")
    print(table(det_rows, dcols + extra))
    print("\nThe same SSD with its recorded grids removed, int8 calibrated on every 4th photo, scored on the other "
          "81\n")
    print(table(det_plain_rows, [c for c in dcols if c[1] != "max_abs_diff"]))
    if args.json:
        Path(args.json).write_text(json.dumps({"classifier": cls_rows, "classifier_without_grids": plain_rows,
                                               "detector": det_rows, "detector_without_grids": det_plain_rows},
                                              indent=1))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
