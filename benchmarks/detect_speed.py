"""Detector latency at batch 1: our SSD (PyTorch eager, ONNX Runtime) beside TF Lite's detect.tflite.

Rows: the imported COCO SSD (alpha 0.75, 300x300) in PyTorch eager fp32 (network only, and with
post-processing), the same exported to ONNX (with NMS) in ONNX Runtime, float, with int8 convs
(calibrated on the first ``--calib`` shared ImageNet photos) and with every quantizable op in int8
(decoding included: the reason ``detect export --int8`` keeps to the convs), the TF Lite interpreter running the
original uint8 detect.tflite (the peer), and on CUDA (when present) PyTorch eager fp32.
Warm-up, then the median of ``--runs`` timed calls; threads and device are printed. Accuracy beside
speed: how many of the interpreter's detections (score >= 0.5) each ONNX model also finds (same
label, IoU >= 0.5) on the held-out photos.

    python benchmarks/detect_speed.py [--threads 2] [--runs 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mobilenet.tflite.ssd import import_detect_tflite  # noqa: E402

DATA = Path(os.environ.get("MOBILENET_DATA", REPO.parent / "shared" / "data"))


def median_ms(fn, runs: int, warmup: int = 5, sync=lambda: None) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def _agreement(sess, interpreter, photos: list[Path]) -> dict:
    """How many of the interpreter's detections (score >= 0.5) ``sess`` also finds (same label, IoU >= 0.5)."""
    from mobilenet.detection.export import onnx_detections
    from mobilenet.detection.postprocess import Detections
    from mobilenet.tflite.parity import Parity, file_input, interpreter_detections, load_pixels, match_detections

    result = Parity()
    for path in photos:
        pixels = load_pixels(path, (300, 300))
        (ours,) = onnx_detections(sess.run(None, {"input": file_input(pixels).numpy()})[0], 1)
        keep = ours.scores >= 0.4  # a reference at 0.5 may score a little lower in ours
        ours = Detections(ours.boxes[keep], ours.scores[keep], ours.labels[keep])
        # any score: this counts detections found, not score agreement
        match_detections(interpreter_detections(interpreter, pixels), ours, result, path.name, min_iou=0.5,
                         score_tol=1.0)
    return {"photos": len(photos), "tflite_detections": result.references, "found": result.matched,
            "rate": round(result.rate, 4) if result.rate is not None else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--calib", type=int, default=32, help="ImageNet photos that calibrate int8 (the rest: agreement)")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    src = DATA / "weights" / "tflite" / "detect.tflite"
    if not src.is_file():
        sys.exit(f"needs {src} (set MOBILENET_DATA)")
    model = import_detect_tflite(src).eval()
    x = torch.randn(1, 3, 300, 300)
    xn = x.numpy()
    rows = []

    def add(name, runtime, device, ms):
        rows.append({"model": name, "runtime": runtime, "device": device, "batch": 1, "median_ms": round(ms, 2)})

    with torch.inference_mode():
        add("ssd_mobilenet_v1 0.75 (network)", "pytorch eager fp32", "cpu", median_ms(lambda: model(x), args.runs))
        add("ssd_mobilenet_v1 0.75 (+postprocess)", "pytorch eager fp32", "cpu",
            median_ms(lambda: model.detect(x), args.runs))
    interpreter = None
    try:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(src), num_threads=args.threads)
        interpreter.allocate_tensors()
        inp = interpreter.get_input_details()[0]
        img = np.random.randint(0, 255, (1, 300, 300, 3), dtype=np.uint8)

        def tfl():
            interpreter.set_tensor(inp["index"], img)
            interpreter.invoke()

        add("detect.tflite (peer, +NMS)", "tflite uint8 (XNNPACK)", "cpu", median_ms(tfl, args.runs))
    except ImportError as e:
        print(f"skipping TF Lite: {e}", file=sys.stderr)
    agreement = {}
    try:
        import onnxruntime as ort

        from mobilenet.detection.export import export_detector_int8, export_detector_onnx
        from mobilenet.tflite.parity import file_input, load_pixels

        photos = sorted(p for p in (DATA / "imagenet" / "images").iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))
        calib, held_out = photos[:args.calib], photos[args.calib:]
        with tempfile.TemporaryDirectory() as tmp:
            sessions = {}
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            calibration = torch.cat([file_input(load_pixels(p, (300, 300))) for p in calib])
            for kind, path in (
                    ("fp32", export_detector_onnx(model, Path(tmp) / "ssd.onnx", nms=True)),
                    ("int8 convs", export_detector_int8(model, Path(tmp) / "ssd_int8.onnx", calibration, nms=True)),
                    # every op ONNX Runtime quantizes, decoding included: why the export keeps to the convs
                    ("int8 all ops", export_detector_int8(model, Path(tmp) / "ssd_int8_all.onnx", calibration,
                                                          op_types=None, nms=True))):
                sess = sessions[kind] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
                add("ssd_mobilenet_v1 0.75 (+NMS)", f"onnxruntime {kind}", "cpu",
                    median_ms(lambda sess=sess, xn=xn: sess.run(None, {"input": xn}), args.runs))
            if interpreter is not None:
                for kind, sess in sessions.items():
                    agreement[f"onnxruntime {kind}"] = _agreement(sess, interpreter, held_out)
    except ImportError as e:
        print(f"skipping ONNX Runtime: {e}", file=sys.stderr)
    if torch.cuda.is_available():
        m, xc = model.cuda(), x.cuda()
        with torch.inference_mode():
            add("ssd_mobilenet_v1 0.75 (network)", "pytorch eager fp32", torch.cuda.get_device_name(),
                median_ms(lambda: m(xc), args.runs, sync=torch.cuda.synchronize))
            add("ssd_mobilenet_v1 0.75 (+postprocess)", "pytorch eager fp32", torch.cuda.get_device_name(),
                median_ms(lambda: m.detect(xc), args.runs, sync=torch.cuda.synchronize))
    env = {"torch": torch.__version__, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
           "runs": args.runs}
    result = {"env": env, "rows": rows, "agreement_with_tflite": agreement}
    print(json.dumps(result, indent=1))
    print("\n| model | runtime | device | batch | median ms |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['runtime']} | {r['device']} | {r['batch']} | {r['median_ms']} |")
    if agreement:
        print("\n| candidate | held-out photos | TF Lite detections >= 0.5 | found (label, IoU >= 0.5) |")
        print("|---|---|---|---|")
        for kind, a in agreement.items():
            print(f"| {kind} | {a['photos']} | {a['tflite_detections']} | {a['found']} ({a['rate']:.1%}) |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
