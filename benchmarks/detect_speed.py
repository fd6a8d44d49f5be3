"""Detector latency at batch 1: our SSD (PyTorch eager, ONNX Runtime) beside TF Lite's detect.tflite.

Rows: the imported COCO SSD (alpha 0.75, 300x300) in PyTorch eager fp32 (network only, and with
post-processing), the same exported to ONNX (with NMS) in ONNX Runtime, the TF Lite interpreter
running the original uint8 detect.tflite (the peer), and on CUDA (when present) PyTorch eager fp32.
Warm-up, then the median of ``--runs`` timed calls; threads and device are printed.

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

from mobilenet.detection.tflite_import import import_detect_tflite  # noqa: E402

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    src = DATA / "weights" / "tflite" / "detect.tflite"
    if not src.is_file():
        sys.exit(f"needs {src} (set MOBILENET_DATA)")
    model = import_detect_tflite(src).eval()
    x = torch.randn(1, 3, 300, 300)
    rows = []

    def add(name, runtime, device, ms):
        rows.append({"model": name, "runtime": runtime, "device": device, "batch": 1, "median_ms": round(ms, 2)})

    with torch.inference_mode():
        add("ssd_mobilenet_v1 0.75 (network)", "pytorch eager fp32", "cpu", median_ms(lambda: model(x), args.runs))
        add("ssd_mobilenet_v1 0.75 (+postprocess)", "pytorch eager fp32", "cpu",
            median_ms(lambda: model.detect(x), args.runs))
    try:
        import onnxruntime as ort

        from mobilenet.detection.export import export_detector_onnx

        with tempfile.TemporaryDirectory() as tmp:
            path = export_detector_onnx(model, Path(tmp) / "ssd.onnx", nms=True)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            xn = x.numpy()
            add("ssd_mobilenet_v1 0.75 (+NMS)", "onnxruntime fp32", "cpu",
                median_ms(lambda: sess.run(None, {"input": xn}), args.runs))
    except ImportError as e:
        print(f"skipping ONNX Runtime: {e}", file=sys.stderr)
    try:
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(src), num_threads=args.threads)
        it.allocate_tensors()
        inp = it.get_input_details()[0]
        img = np.random.randint(0, 255, (1, 300, 300, 3), dtype=np.uint8)

        def tfl():
            it.set_tensor(inp["index"], img)
            it.invoke()

        add("detect.tflite (peer, +NMS)", "tflite uint8 (XNNPACK)", "cpu", median_ms(tfl, args.runs))
    except ImportError as e:
        print(f"skipping TF Lite: {e}", file=sys.stderr)
    if torch.cuda.is_available():
        m, xc = model.cuda(), x.cuda()
        with torch.inference_mode():
            add("ssd_mobilenet_v1 0.75 (network)", "pytorch eager fp32", torch.cuda.get_device_name(),
                median_ms(lambda: m(xc), args.runs, sync=torch.cuda.synchronize))
            add("ssd_mobilenet_v1 0.75 (+postprocess)", "pytorch eager fp32", torch.cuda.get_device_name(),
                median_ms(lambda: m.detect(xc), args.runs, sync=torch.cuda.synchronize))
    env = {"torch": torch.__version__, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
           "runs": args.runs}
    print(json.dumps({"env": env, "rows": rows}, indent=1))
    print("\n| model | runtime | device | batch | median ms |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['runtime']} | {r['device']} | {r['batch']} | {r['median_ms']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
