"""Smoke test of the whole fine-tuning path: the imported COCO SSD fine-tuned on the shared VOC and KITTI samples.

The samples are tiny (8 VOC images, 6 KITTI frames), so this trains and evaluates on the same images:
it shows that import -> new class heads -> matching/loss -> training -> evaluation runs end to end
and that the loss falls, not how well the detector generalises. BN stays frozen (the .tflite's BN is
folded into the convolutions). The hyper-parameters and input sizes are the shipped recipes'
(``configs/ssd_voc.toml``: 300x300; ``configs/ssd_kitti.toml``: 384x1248), as ``mobilenet detect train
--config ... --weights detect.tflite`` would use them, with fewer epochs and one batch of all the samples.

    python benchmarks/detect_finetune.py [--epochs 30] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mobilenet.detection.datasets import read_kitti, read_voc  # noqa: E402
from mobilenet.detection.evaluate import evaluate_detector  # noqa: E402
from mobilenet.engine.detect import adopt_classes, fit_detector, set_input_size  # noqa: E402
from mobilenet.recipe import DetectConfig, resolve  # noqa: E402
from mobilenet.tflite.ssd import import_detect_tflite  # noqa: E402

DATA = Path(os.environ.get("MOBILENET_DATA", REPO.parent / "shared" / "data"))


def run(name: str, ds, recipe: str, epochs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = resolve(REPO / "configs" / recipe, {"epochs": epochs, "eval_every": 0, "device": "cpu", "workers": 0,
                                                  "freeze_bn": True, "out": tmp, "tensorboard": False,
                                                  "curves": False}, DetectConfig)
        metric = cfg.metric
        return _run(name, ds, recipe, epochs, cfg, metric)


def _run(name: str, ds, recipe: str, epochs: int, cfg: DetectConfig, metric: str) -> dict:
    model = import_detect_tflite(DATA / "weights" / "tflite" / "detect.tflite")
    adopt_classes(model, ds.class_names)  # new class heads, named as the dataset's
    set_input_size(model, cfg.image_hw() or model.config.image_size)
    model.config = type(model.config).from_dict({**model.config.to_dict(), "postprocess": {
        **model.config.postprocess.to_dict(), "score_fn": "softmax", "nms_mode": "per_class", "max_detections": 100,
        "score_threshold": 0.01}})  # what the detection task would set for the softmax loss; needed for "before"
    before = evaluate_detector(model, ds, metric=metric)["map"]
    t = time.time()
    h = fit_detector(cfg, model=model, train_set=ds, val_set=ds)["history"]
    return {"dataset": name, "recipe": recipe, "image_size": list(model.config.image_size), "images": len(ds),
            "classes": ds.class_names, "epochs": epochs, "optimizer": cfg.optimizer, "lr": cfg.lr,
            "batch": min(cfg.batch_size, len(ds)),
            "loss_first": round(h[0]["train_loss"], 3), "loss_last": round(h[-1]["train_loss"], 3),
            f"{metric}_map_before": round(before, 4), f"{metric}_map_after": round(h[-1]["map"], 4),
            "seconds": round(time.time() - t, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    voc = read_voc(DATA / "detection" / "voc" / "VOCdevkit", "trainval")
    present = sorted({voc.class_names[i] for a in voc.annotations for i in a.labels.tolist()})
    voc = read_voc(DATA / "detection" / "voc" / "VOCdevkit", "trainval", present)
    kitti = read_kitti(DATA / "detection" / "kitti" / "training")
    rows = [run("voc samples", voc, "ssd_voc.toml", args.epochs),
            run("kitti samples", kitti, "ssd_kitti.toml", args.epochs)]
    print(json.dumps({"env": {"torch": torch.__version__, "threads": args.threads}, "rows": rows}, indent=1))
    print("\n| data | recipe | input | images | epochs | loss first -> last | mAP before -> after (same images) | s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        m = [k for k in r if k.endswith("_map_before")][0].replace("_map_before", "")
        h, w = r["image_size"]
        print(f"| {r['dataset']} | {r['recipe']} | {h}x{w} | {r['images']} | {r['epochs']} | {r['loss_first']} -> "
              f"{r['loss_last']} | {m}: {r[m + '_map_before']} -> {r[m + '_map_after']} | {r['seconds']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
