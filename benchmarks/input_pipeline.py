"""Input pipeline throughput: images/s per CPU core for JPEG decode (+ augment), Pillow vs simplejpeg side by side.

Tells whether a DataLoader keeps up with the GPU: needed workers ~= GPU images/s / (images/s per core here).

    python benchmarks/input_pipeline.py                       # ../shared/data (or $MOBILENET_DATA)
    python benchmarks/input_pipeline.py --json results.json --repeats 5

Cases (one process, one thread): images per CPU-second of this process (``time.process_time``), which is the
per-core rate and stays meaningful on a machine shared with other jobs; wall-clock rates are reported beside it.
Every case gets a warm-up pass, then the cases run round-robin ``--repeats`` times (peers see the same load) and
the median is reported.
* ImageNet photos (``imagenet/images``, 100 full-size JPEGs): decode only; decode + ImageNet training augmentation
  at 224 (random resized crop, flip, jitter, normalise); decode + evaluation (resize 256, centre crop 224), also
  with reduced-size decoding (``min_size``: DCT-domain downscaling).
* CIFAR-10 ``test.zip`` (32x32 JPEGs in a zip): read + decode; read + decode + CIFAR augmentation; and the fast
  path: the whole set decoded once (``load_tensor_dataset``, all cores) then augmented as batches on the CPU
  (``random_crop_flip``), which a GPU runs far faster.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mobilenet.data import available_decoders, decode_image, load_tensor_dataset, open_image_dataset
from mobilenet.data.batch_augment import normalize_batch, random_crop_flip
from mobilenet.data.transforms import eval_transform, train_transform
from mobilenet.preprocessing import Preprocessing

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("MOBILENET_DATA", REPO.parent / "shared" / "data"))


def run_round_robin(cases: dict[str, Callable[[], int]], repeats: int) -> dict[str, dict[str, object]]:
    """Per case: median images per CPU-second and per wall-second over ``repeats`` interleaved passes."""
    for fn in cases.values():
        fn()  # warm-up: file cache, decoder tables, lazy imports
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    wall: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            n = fn()  # each case returns the number of images it processed
            cpu[name].append(n / max(time.process_time() - cpu_start, 1e-9))
            wall[name].append(n / (time.perf_counter() - wall_start))
    return {name: {"img_per_cpu_s": statistics.median(cpu[name]), "img_per_wall_s": statistics.median(wall[name]),
                   "cpu_runs": cpu[name]} for name in cases}


def imagenet_cases(folder: Path, decoders: list[str]) -> dict[str, Callable[[], int]]:
    files = [p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix.lower() in (".jpeg", ".jpg")]
    if not files:
        raise FileNotFoundError(f"no JPEGs in {folder}")
    pre = Preprocessing.imagenet(224)
    augment, evaluate_transform = train_transform("imagenet", pre), eval_transform(pre)
    cases: dict[str, Callable[[], int]] = {}
    for dec in decoders:
        def decode(dec=dec):
            for data in files:
                decode_image(data, decoder=dec)
            return len(files)

        def train(dec=dec):
            for data in files:
                augment(decode_image(data, decoder=dec))
            return len(files)

        def evaluate(dec=dec, min_size=None):
            for data in files:
                evaluate_transform(decode_image(data, decoder=dec, min_size=min_size))
            return len(files)

        cases[f"imagenet/decode/{dec}"] = decode
        cases[f"imagenet/decode+train_aug224/{dec}"] = train
        cases[f"imagenet/decode+eval224/{dec}"] = evaluate
        cases[f"imagenet/reduced_decode+eval224/{dec}"] = lambda dec=dec: evaluate(dec, min_size=256)
    return cases


def cifar_cases(zip_path: Path, decoders: list[str]) -> dict[str, Callable[[], int]]:
    ds = open_image_dataset(zip_path, check="none")
    limit = min(len(ds), 5000)
    names = ds.names[:limit]
    pre = Preprocessing(resolution=32, crop_fraction=1.0)
    augment = train_transform("cifar", pre)
    cases: dict[str, Callable[[], int]] = {}
    for dec in decoders:
        def decode(dec=dec, transform=None):
            for name in names:
                image = decode_image(ds.reader.read(name), name, decoder=dec)
                if transform is not None:
                    transform(image)
            return limit

        cases[f"cifar_zip/read+decode/{dec}"] = decode
        cases[f"cifar_zip/read+decode+cifar_aug/{dec}"] = lambda dec=dec: decode(dec, augment)
    return cases


def tensor_fast_path(zip_path: Path, repeats: int) -> dict[str, float]:
    """Decode the whole zip once (all cores), then batch augmentation on the CPU (one thread)."""
    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    images, _ = load_tensor_dataset(zip_path, progress=False)
    decode_s = time.perf_counter() - start
    torch.set_num_threads(1)
    pre = Preprocessing(resolution=32, crop_fraction=1.0)

    def augment_all() -> int:
        for batch in images.split(512):
            normalize_batch(random_crop_flip(batch, 4), pre)
        return len(images)

    rate = run_round_robin({"batch_aug": augment_all}, repeats)["batch_aug"]["img_per_cpu_s"]
    return {"images": len(images), "decode_all_wall_s": decode_s, "decode_all_img_per_wall_s": len(images) / decode_s,
            "batch_aug_img_per_cpu_s_1thread": rate}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per case (median reported)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    imagenet_dir, cifar_zip = args.data / "imagenet" / "images", args.data / "cifar10" / "test.zip"
    if not imagenet_dir.is_dir() and not cifar_zip.is_file():
        print(f"no benchmark data under {args.data} (set --data or MOBILENET_DATA)", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    decoders = available_decoders()
    cases: dict[str, Callable[[], int]] = {}
    if imagenet_dir.is_dir():
        cases.update(imagenet_cases(imagenet_dir, decoders))
    if cifar_zip.is_file():
        cases.update(cifar_cases(cifar_zip, decoders))
    results: dict[str, object] = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "pillow": __import__("PIL").__version__, "decoders": decoders, "threads_per_case": 1,
                    "load_average_at_start": os.getloadavg()},
        "cases": {},
    }
    results["cases"] = run_round_robin(cases, args.repeats)
    if cifar_zip.is_file():
        results["cifar_tensor_fast_path"] = tensor_fast_path(cifar_zip, args.repeats)

    print(json.dumps(results, indent=2))
    print()
    print(f"{'case':<40} {'decoder':<11} {'img/cpu-s':>10} {'img/wall-s':>11} {'vs pillow':>9}")
    for name, row in sorted(results["cases"].items()):
        case, dec = name.rsplit("/", 1)
        base = results["cases"].get(f"{case}/pillow", {}).get("img_per_cpu_s")
        ratio = f"{row['img_per_cpu_s'] / base:.2f}x" if base else ""
        print(f"{case:<40} {dec:<11} {row['img_per_cpu_s']:>10.0f} {row['img_per_wall_s']:>11.0f} {ratio:>9}")
    if "cifar_tensor_fast_path" in results:
        fast = results["cifar_tensor_fast_path"]
        print(f"CIFAR test.zip decoded once into a tensor: {fast['images']} images in {fast['decode_all_wall_s']:.2f} s"
              f" wall ({fast['decode_all_img_per_wall_s']:.0f} img/s, {os.cpu_count()} cores); batch "
              f"crop+flip+normalise on 1 CPU thread: {fast['batch_aug_img_per_cpu_s_1thread']:.0f} img/cpu-s")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
