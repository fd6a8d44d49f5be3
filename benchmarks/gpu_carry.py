"""Pack what the GPU suite's CIFAR-10 section needs into a git-ignored folder that fits beside the working tree.

A device call sends the working tree plus the carried folders, 64 MiB in all. The shared CIFAR-10 zips are 62 MiB,
so as the tree grows they stop fitting. This keeps the whole test set and as many training images as still fit,
the same number from every class (the first ones of each class folder), written uncompressed like the originals,
and prints how many it kept. The suite reports the image counts it trained and tested on.

    python benchmarks/gpu_carry.py                                   # -> .gpu-data/cifar10/{train,test}.zip
    python benchmarks/gpu_carry.py --data ../shared/data/cifar10 --out .gpu-data/cifar10 --limit-mib 64
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import zipfile
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARGIN = 256 * 1024  # headroom for files written between packing and the call
ZIP_OVERHEAD = 120  # bytes of local header + central directory entry per member, beyond the two name copies


def tree_bytes(repo: Path = REPO) -> int:
    """Bytes of the files a device call sends: tracked files and untracked ones git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                         capture_output=True, check=True).stdout
    return sum((repo / name).stat().st_size for name in out.decode().split("\0") if name and (repo / name).is_file())


def _member_cost(info: zipfile.ZipInfo) -> int:
    return info.compress_size + 2 * len(info.filename.encode()) + ZIP_OVERHEAD


def pack(data: Path, out: Path, budget: int) -> dict[str, int]:
    """Copy test.zip whole and a class-balanced prefix of train.zip into ``out`` within ``budget`` bytes."""
    test, train = data / "test.zip", data / "train.zip"
    for path in (test, train):
        if not path.is_file():
            raise FileNotFoundError(f"no {path.name} in {data}")
    out.mkdir(parents=True, exist_ok=True)
    left = budget - test.stat().st_size
    if left <= 0:
        raise ValueError(f"the test set alone ({test.stat().st_size / 2**20:.1f} MiB) does not fit in "
                         f"{budget / 2**20:.1f} MiB")
    with zipfile.ZipFile(train) as src:
        by_class: dict[str, list[zipfile.ZipInfo]] = defaultdict(list)
        for info in src.infolist():
            if not info.is_dir():
                by_class[info.filename.split("/")[-2]].append(info)
        per_class = max(len(v) for v in by_class.values())
        while per_class > 0 and sum(_member_cost(i) for v in by_class.values() for i in v[:per_class]) > left:
            per_class -= max(1, per_class // 100)
        kept = [i for v in by_class.values() for i in v[:per_class]]
        tmp = out / "train.zip.tmp"
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as dst:
            for info in kept:
                dst.writestr(info, src.read(info))
        os.replace(tmp, out / "train.zip")
    (out / "test.zip").write_bytes(test.read_bytes())
    with zipfile.ZipFile(test) as t:
        n_test = sum(not i.is_dir() for i in t.infolist())
    return {"train_images": len(kept), "train_per_class": per_class, "classes": len(by_class),
            "test_images": n_test, "bytes": sum(p.stat().st_size for p in out.iterdir())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path(os.environ.get("MOBILENET_DATA", REPO.parent / "shared" / "data"))
                   / "cifar10", help="folder with the full train.zip and test.zip")
    p.add_argument("--out", type=Path, default=REPO / ".gpu-data" / "cifar10")
    p.add_argument("--limit-mib", type=float, default=64.0, help="what one device call may send in all")
    args = p.parse_args(argv)
    budget = int(args.limit_mib * 2**20) - tree_bytes() - MARGIN
    try:
        got = pack(args.data, args.out, budget)
    except (FileNotFoundError, ValueError) as e:
        print(f"gpu_carry: {e}", file=sys.stderr)
        return 2
    print(f"{args.out}: {got['test_images']} test images, {got['train_images']} training images "
          f"({got['train_per_class']} per class), {got['bytes'] / 2**20:.1f} MiB beside a "
          f"{tree_bytes() / 2**20:.2f} MiB working tree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
