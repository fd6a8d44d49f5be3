"""The README's detection picture: a small SSD trained on generated shapes, boxes drawn by `detect predict`.

Made from data this project generates (``mobilenet.detection.synthetic``), so the picture can be
redistributed. Steps (1 torch thread; steps 3-4 run the real CLI commands in subprocesses):

1. generate the shapes set of the evidence test (2000 train / 100 test images, 64x64, seed 0);
2. train through ``mobilenet.engine.detect.fit_detector`` (in process, seeded init): alpha 0.25, 64x64
   input, the evidence test's recipe (AdamW, lr 0.01, 10 epochs, no augmentation);
3. ``mobilenet detect eval`` on the held-out test split (VOC all-point mAP@0.5);
4. ``mobilenet detect predict`` on the first ``--tiles`` test images (no choosing), enlarged 4x (bicubic) so
   the captions it draws fit: predict resizes every input back to the model's 64x64;
5. tile those pictures into one PNG, palette-quantised to stay small: by default under ``runs/``; the README's
   picture is replaced only when asked, with ``--out docs/detections_shapes.png``.

    python benchmarks/detect_shapes_picture.py [--out docs/detections_shapes.png] [--tiles 6] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mobilenet.detection.datasets import read_voc  # noqa: E402
from mobilenet.detection.synthetic import SHAPE_CLASSES, make_shapes_voc  # noqa: E402

# The evidence test's set (tests/test_det_train.py::test_small_ssd_learns_shapes_to_map_090).
TRAIN_SET = dict(num_train=2000, num_test=100, image_size=64, min_frac=0.3, max_frac=0.6, max_objects=2, easy=True,
                 seed=0)
# `detect predict` draws its captions in Pillow's default font (about 11 px high): legible on 256 px, not on 64 px.
ENLARGE = 4
CLASSES = ",".join(SHAPE_CLASSES)


def cli(args: list[str], threads: int, commands: list[str]) -> str:
    """Run ``python -m mobilenet <args>`` with ``threads`` intra-op threads; return its stdout (stderr passes)."""
    cmd = [sys.executable, "-m", "mobilenet", *args]
    commands.append(shlex.join(["python", "-m", "mobilenet", *args]))
    print(f"$ {commands[-1]}", flush=True)
    # torch reads OMP_NUM_THREADS for its intra-op pool: on a busy 2-core machine 1 thread was ~10x faster than 2
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"command failed with exit status {done.returncode}: {commands[-1]}\n{done.stdout}")
    return done.stdout


def train(shapes: Path, run_dir: Path, epochs: int, seed: int, threads: int, commands: list[str]) -> Path:
    """The evidence test's training, in this process through the engine's detection task; return the last weights.

    In process, as the test runs it (the SSD built here and handed over; its initial weights seeded).
    """
    import torch

    from mobilenet.detection import SSD, SSDConfig
    from mobilenet.engine.detect import fit_detector
    from mobilenet.recipe import DetectConfig

    torch.set_num_threads(threads)
    torch.manual_seed(seed)  # the SSD's initial weights
    model = SSD(SSDConfig(num_classes=len(SHAPE_CLASSES), width_mult=0.25, image_size=(64, 64)))
    cfg = DetectConfig(epochs=epochs, batch_size=64, optimizer="adamw", lr=1e-2, weight_decay=0.0,
                       warmup_epochs=1, augment=False, eval_every=0, metric="voc", device="cpu", seed=seed,
                       out=str(run_dir), tensorboard=False)
    commands.append(f"torch.manual_seed({seed}); fit_detector({cfg!r}, model=SSD(SSDConfig(num_classes=3, "
                    f"width_mult=0.25, image_size=(64, 64))), train_set=read_voc(shapes, 'trainval'), "
                    f"val_set=read_voc(shapes, 'test'))")
    print(f"$ {commands[-1]}", flush=True)
    end = fit_detector(cfg, model=model, train_set=read_voc(shapes, "trainval", SHAPE_CLASSES),
                       val_set=read_voc(shapes, "test", SHAPE_CLASSES))
    return Path(end["last"])


def tile(pictures: list[Path], out: Path, columns: int, gutter: int = 4, colours: int = 64) -> Path:
    """Tile equally sized ``pictures`` row-major into one PNG (white gutters); palette-quantised for size."""
    images = [Image.open(p).convert("RGB") for p in pictures]
    w, h = images[0].size
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * w + (columns + 1) * gutter, rows * h + (rows + 1) * gutter), "white")
    for k, im in enumerate(images):
        r, c = divmod(k, columns)
        sheet.paste(im.resize((w, h)), (gutter + c * (w + gutter), gutter + r * (h + gutter)))
    out.parent.mkdir(parents=True, exist_ok=True)
    # A 64-colour palette keeps the box/caption colours exact enough and cuts the noisy backgrounds' bytes.
    sheet.quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        out, format="PNG", optimize=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "runs" / "detect_shapes_picture" / "detections_shapes.png"),
                    help="the tiled PNG (the README's: docs/detections_shapes.png)")
    ap.add_argument("--tiles", type=int, default=6, help="held-out test images in the picture (the first N)")
    ap.add_argument("--columns", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads of each command")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0, help="seeds the SSD's initial weights and the training order")
    ap.add_argument("--json", help="also write the measured numbers and commands here")
    args = ap.parse_args()
    t_start = time.perf_counter()
    commands: list[str] = []
    with tempfile.TemporaryDirectory(prefix="shapes_picture_") as tmp:
        work = Path(tmp)
        shapes = make_shapes_voc(work / "shapes", **TRAIN_SET)
        run_dir, pred_dir = work / "run", work / "predicted"
        t0 = time.perf_counter()
        weights = train(shapes, run_dir, args.epochs, args.seed, args.threads, commands)
        train_s = time.perf_counter() - t0
        cli(["detect", "eval", "--weights", str(weights), "--data", str(shapes), "--classes", CLASSES,
             "--split", "test", "--metric", "voc", "--device", "cpu", "--json", str(work / "map.json")],
            args.threads, commands)
        metrics = json.loads((work / "map.json").read_text())
        ids = (shapes / "ImageSets" / "Main" / "test.txt").read_text().split()[: args.tiles]
        enlarged = work / "enlarged"
        enlarged.mkdir()
        for i in ids:
            with Image.open(shapes / "JPEGImages" / f"{i}.png") as im:
                im.resize((im.width * ENLARGE, im.height * ENLARGE), Image.BICUBIC).save(enlarged / f"{i}.png")
        cli(["detect", "predict", str(enlarged), "--weights", str(weights), "--out", str(pred_dir), "--device", "cpu"],
            args.threads, commands)
        detections = json.loads((pred_dir / "detections.json").read_text())
        objects = sum(len(a.boxes) for a in read_voc(shapes, "test", SHAPE_CLASSES).annotations
                      if a.image_path.stem in ids)
        out = tile([pred_dir / f"{i}.png" for i in ids], Path(args.out), args.columns)  # predict keeps PNG
    total_s = time.perf_counter() - t_start
    result = {
        "picture": str(out), "picture_kb": round(out.stat().st_size / 1024, 1), "threads": args.threads,
        "epochs": args.epochs, "train_s": round(train_s, 1), "total_s": round(total_s, 1),
        "map_voc_test": round(metrics["map"], 4),
        "ap_per_class_test": {k: round(v, 4) for k, v in metrics["per_class"].items()},
        "pictured_images": ids,
        "detections_in_picture": sum(len(r["detections"]) for r in detections),
        "objects_in_picture": objects,
        "commands": commands,
    }
    print(json.dumps(result, indent=1))
    print()
    print(f"{'class':<12}{'AP@0.5':>8}")
    for k, v in result["ap_per_class_test"].items():
        print(f"{k:<12}{v:>8.4f}")
    print(f"{'mean':<12}{result['map_voc_test']:>8.4f}   (VOC all-point, {TRAIN_SET['num_test']} held-out images)")
    print(f"training {train_s:.0f} s, all {total_s:.0f} s, {args.threads} thread(s); wrote {out} "
          f"({result['picture_kb']} KB)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
