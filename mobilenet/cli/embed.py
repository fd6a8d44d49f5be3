"""`mobilenet embed`: one vector per image (pooled MobileNet features), written to a file; nearest images.

Examples::

    mobilenet convert mobilenet_v1_0.25_128_quant.tflite --out tflite_025.safetensors
    mobilenet embed photos/ --weights tflite_025.safetensors --out photos.safetensors
    mobilenet embed photos/ --weights tflite_025.safetensors --similar photos/cat.jpg --top 5
    mobilenet embed photos/ --weights w.safetensors --layer 3 --out stride16.npy     # a stage of forward_stages
"""

from __future__ import annotations

import argparse
import sys

from .flags import positive_int
from .paths import check_output_file

NAME = "embed"
HELP = "image embeddings (pooled features) to .npy/.safetensors/.csv; nearest images by cosine similarity"
DESCRIPTION = __doc__ + """
The vector is the global average of the pre-logits features (default) or of stage --layer of forward_stages
(0..4: strides 2, 4, 8, 16, 32), L2-normalised unless --no-normalize. .npy writes the names to <out>.names.txt.
--similar QUERY embeds QUERY too and prints the inputs closest to it (cosine similarity).
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="IMAGE|DIR|GLOB")
    p.add_argument("--weights", required=True, help="MobileNet v1 weights (.safetensors; import others with "
                   "`mobilenet convert`), with or without a classifier")
    p.add_argument("--out", help="embeddings file: .npy, .safetensors or .csv")
    p.add_argument("--layer", type=int, help="pool stage N of forward_stages instead of the pre-logits features")
    p.add_argument("--no-normalize", action="store_true", help="keep the vectors' lengths (no L2 normalisation)")
    p.add_argument("--similar", metavar="QUERY", help="print the inputs nearest to this image")
    p.add_argument("--top", type=int, default=5, help="neighbours printed by --similar (default: 5)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default: 32)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..checkpoint import load
    from ..data.decode import ImageDecodeError, read_image
    from ..distributed import resolve_device
    from ..embed import SUFFIXES, embed_images, nearest, write_embeddings
    from ..predict import expand_inputs

    if not args.out and not args.similar:
        raise ValueError("nothing to do: give --out FILE, --similar QUERY, or both")
    paths = expand_inputs(args.inputs)
    if args.similar:  # the query is read first: not after minutes of embedding the inputs
        try:
            read_image(args.similar)
        except ImageDecodeError as e:
            raise ValueError(f"--similar {args.similar}: {str(e).split(': ', 1)[-1]}") from None
    if args.top < 1:  # checked here, before any work (tests call main() and expect its exit code)
        raise ValueError(f"--top must be >= 1, got {args.top}")
    if args.out and Path(args.out).suffix.lower() not in SUFFIXES:
        raise ValueError(f"--out must end in one of {', '.join(SUFFIXES)}, got {args.out}")
    if args.out:
        check_output_file(args.out, flag="--out", inputs=[args.weights, *paths])
    device = resolve_device(args.device)
    model = load(args.weights, map_location=device)
    options = dict(layer=args.layer, normalize=not args.no_normalize, batch_size=args.batch_size, device=device)
    names, vectors, problems = embed_images(model, paths, progress=not args.no_progress, **options)
    for line in problems:
        print(f"skipped {line}", file=sys.stderr)
    if not names:
        raise ValueError(f"none of the {len(paths)} input(s) could be read as an image")
    if args.out:
        info = {"weights": str(args.weights), "layer": args.layer, "normalized": not args.no_normalize}
        written = write_embeddings(args.out, names, vectors, info=info)
        print(f"wrote {len(names)} x {vectors.shape[1]} embeddings to {', '.join(map(str, written))}")
    if args.similar:
        qnames, query, qproblems = embed_images(model, [args.similar], **options)
        if not qnames:
            raise ValueError(f"--similar {args.similar}: {qproblems[0].split(': ', 1)[-1]}")
        same = [i for i, n in enumerate(names) if Path(n).resolve() == Path(args.similar).resolve()]
        print(f"nearest to {args.similar} (cosine similarity):")
        for i, sim in nearest(query[0], vectors, args.top, exclude=same[0] if same else None):
            print(f"  {sim:.4f}  {names[i]}")
    return 0
