"""`mobilenet pretrained`: the local cache of published ImageNet weights, by variant name."""

from __future__ import annotations

import argparse

NAME = "pretrained"
HELP = "published ImageNet weights by name: list them, add a downloaded file to the cache, fetch from the Hub"
DESCRIPTION = """Published ImageNet weights by variant name, kept converted in the local cache
($MOBILENET_CACHE, default ~/.cache/mobilenet) so that create_model(name, pretrained=True) and
`mobilenet train --model NAME --pretrained` find them offline.

examples:
  mobilenet pretrained --list                            # every published file, and which are cached
  mobilenet pretrained mobilenet_v1_100_224              # from the Hugging Face Hub (mobilenet[hub])
  mobilenet pretrained mobilenet_v1_100_224 --source timm                     # one source of several
  mobilenet pretrained mobilenet_v1_025_128 --add mobilenet_2_5_128_tf.h5     # a file you downloaded
  mobilenet pretrained mobilenet_v1_025_128 --add mobilenet_v1_0.25_128_quant.tgz   # Google's archive
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="variant, e.g. mobilenet_v1_025_128 (see `mobilenet models`)")
    p.add_argument("--add", metavar="FILE", help="a published weights file you downloaded (.h5, .tflite, .tgz, "
                                                 "TF-slim .ckpt.index, .caffemodel, timm/Hugging Face state dict)")
    p.add_argument("--source", help="which published file: keras, slim, tflite_quant, huggingface, timm "
                                    "(default: the one cached, else the first on the Hub)")
    p.add_argument("--list", action="store_true", help="list the published files of every variant (or of NAME) "
                                                      "and which are in the cache")


def _list(name: str | None) -> None:
    from ..cache import cached, pretrained_dir
    from ..published import RELEASES

    have = {(c.name, c.source): c.path for c in cached()}
    print(f"cache: {pretrained_dir()}")
    print(f"{'variant':<22} {'source':<13} {'cached':<7} download")
    for variant, releases in RELEASES.items():
        if name not in (None, variant):
            continue
        sources = [r.source for r in releases]
        for r in releases:
            hub = f"  (Hub: {r.hub[0]})" if r.hub else ""
            print(f"{variant:<22} {r.source:<13} {'yes' if (variant, r.source) in have else '-':<7} {r.url}{hub}")
        for (v, s) in sorted(have):  # converted from other files (e.g. a float .tflite)
            if v == variant and s not in sources:
                print(f"{variant:<22} {s:<13} {'yes':<7} (added from a local file)")


def run(args: argparse.Namespace) -> int:
    from .flags import CLIError

    if args.list or (args.name is None and args.add is None):
        _list(args.name)
        return 0
    from ..cache import find
    from ..hub import add, download

    if args.add is not None:
        try:
            entry = add(args.add, name=args.name)
        except ImportError as e:  # an optional reader (h5py) is missing: say which, no traceback
            raise CLIError(str(e)) from None
        if args.source is not None and entry.source != args.source:
            raise CLIError(f"{args.add} is a {entry.source} file, not {args.source} (added as {entry.path})")
        print(f"added {entry.name} ({entry.source}): {entry.path}")
        return 0
    path = find(args.name, args.source)
    if path is not None:
        print(f"{args.name} ({args.source or 'cached'}): {path}")
        return 0
    entry = download(args.name, args.source)
    print(f"downloaded {entry.name} ({entry.source}): {entry.path}")
    return 0
