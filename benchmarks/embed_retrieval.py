"""Retrieval precision@1 of `mobilenet embed` on the 100 shared ImageNet photos (one per class), with the imported
pretrained weights, beside a randomly initialised network of the same shape (the "no learning" baseline) and chance.

The photos are one per class, so "same class" is measured two ways:

* ``view``: each photo, cropped to its central 60 % and mirrored, must find its own original among the 100
  (same photo, hence same class; chance 1 %);
* ``superclass``: leave-one-out among the 100, a hit when the nearest photo is of the same Restricted-ImageNet
  superclass (Tsipras et al. 2019, arXiv:1805.12152: class-index ranges for dog, cat, frog, turtle, bird,
  primate, fish, crab, insect), over the queries that have at least one partner; chance is the mean of
  (partners / 99) over those queries.

    python benchmarks/embed_retrieval.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mobilenet.convert import import_model  # noqa: E402
from mobilenet.embed import embed_batch, precision_at_1  # noqa: E402
from mobilenet.model import MobileNetV1  # noqa: E402
from mobilenet.predict import model_preprocessing  # noqa: E402

DATA = Path(os.environ.get("MOBILENET_DATA", REPO.parent / "shared" / "data"))
WEIGHTS = {"tflite_025_128 (TF Lite, quantized)": DATA / "weights" / "tflite" / "mobilenet_v1_0.25_128_quant.tflite",
           "keras_025_224 (Keras, no top)": DATA / "weights" / "keras" / "mobilenet_2_5_224_tf_no_top.h5"}
# Restricted ImageNet (Tsipras et al. 2019): superclass -> inclusive ranges of ImageNet class indices
SUPERCLASSES = {"dog": (151, 268), "cat": (281, 285), "frog": (30, 32), "turtle": (33, 37), "bird": (80, 100),
                "primate": (365, 382), "fish": (389, 397), "crab": (118, 121), "insect": (300, 319)}


def superclass(index: int) -> str | None:
    return next((name for name, (lo, hi) in SUPERCLASSES.items() if lo <= index <= hi), None)


def view(image: Image.Image) -> Image.Image:
    w, h = image.size
    box = (round(0.2 * w), round(0.2 * h), round(0.8 * w), round(0.8 * h))
    return ImageOps.mirror(image.crop(box))


def measure(model: torch.nn.Module, photos: list[Path], classes: list[int]) -> dict:
    pre = model_preprocessing(model)
    images = [Image.open(p).convert("RGB") for p in photos]
    with torch.inference_mode():
        gallery = embed_batch(model.eval(), torch.stack([pre(im) for im in images]))
        queries = embed_batch(model, torch.stack([pre(view(im)) for im in images]))
    ids = list(range(len(photos)))
    groups = [superclass(c) for c in classes]
    partnered = [i for i, g in enumerate(groups) if g is not None and groups.count(g) > 1]
    # leave-one-out among the photos, scored on the partnered queries only
    sims = torch.nn.functional.normalize(gallery, dim=1) @ torch.nn.functional.normalize(gallery, dim=1).T
    sims.fill_diagonal_(-float("inf"))
    best = sims.argmax(1)
    hits = [groups[int(best[i])] == groups[i] for i in partnered]
    return {"dim": gallery.shape[1], "view_p1": precision_at_1(queries, gallery, ids, ids),
            "superclass_p1": sum(hits) / len(hits), "superclass_queries": len(partnered),
            "superclass_chance": sum((groups.count(groups[i]) - 1) / (len(photos) - 1) for i in partnered)
            / len(partnered)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    folder = DATA / "imagenet" / "images"
    synsets = DATA / "imagenet" / "labels" / "synset_words.txt"
    if not folder.is_dir() or not synsets.is_file():
        sys.exit(f"needs {folder} and {synsets} (set MOBILENET_DATA)")
    index = {line.split()[0]: i for i, line in enumerate(synsets.read_text().splitlines())}
    photos = sorted(folder.glob("*.JPEG"))
    classes = [index[ph.name.split("_")[0]] for ph in photos]
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    rows = {}
    for name, path in WEIGHTS.items():
        if not path.is_file():
            print(f"skipping {name}: {path} not found", file=sys.stderr)
            continue
        model = import_model(path)
        rows[name] = measure(model, photos, classes)
        torch.manual_seed(0)
        rand = MobileNetV1(width_mult=model.config.width_mult, resolution=model.config.resolution, num_classes=0,
                           preset=model.config.preset)
        rand.weights_info = model.weights_info  # the same preprocessing
        rows[f"  random init, {name.split()[0]} shape"] = measure(rand, photos, classes)
    first = next(iter(rows.values()))
    print(f"{len(photos)} photos; view chance {100 / len(photos):.1f}%; superclass: {first['superclass_queries']} "
          f"queries with a partner, chance {100 * first['superclass_chance']:.1f}%")
    print(f"{'weights':<40}{'dim':>6}{'view P@1':>10}{'superclass P@1':>16}")
    for name, r in rows.items():
        print(f"{name:<40}{r['dim']:>6}{100 * r['view_p1']:>9.1f}%{100 * r['superclass_p1']:>15.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
