"""Images -> embeddings: pooled MobileNet features, one vector per image (the paper's section 4 uses MobileNet
features this way: geolocalization, face embeddings), nearest neighbours by cosine similarity, and retrieval
precision@1.

The vector is the global average of a feature map: the pre-logits features (the last stage, what the
classifier reads) by default, or any stage of ``forward_stages`` (``layer`` 0..4: strides 2, 4, 8, 16, 32),
L2-normalised unless asked otherwise. Files: ``.npy`` (vectors; names in ``<file>.names.txt`` beside it),
``.safetensors`` (tensor ``embeddings``, names in the metadata) or ``.csv`` (name, then the values).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import atomic_write
from .data.decode import ImageDecodeError, read_image
from .preprocessing import Preprocessing

SUFFIXES = (".npy", ".safetensors", ".csv")


def _stage_count(model: nn.Module) -> int:
    return len(model.feature_info)


def check_layer(model: nn.Module, layer: int | None) -> None:
    """Refuse a ``layer`` that is no stage of ``model.forward_stages`` (0..n-1; negative counts from the end)."""
    n = _stage_count(model)
    if layer is not None and not -n <= layer < n:
        raise ValueError(f"layer must be in 0..{n - 1} (a stage of forward_stages; -1 is the last), got {layer}")


@torch.inference_mode()
def embed_batch(model: nn.Module, x: torch.Tensor, *, layer: int | None = None, normalize: bool = True
                ) -> torch.Tensor:
    """(B, 3, H, W) model inputs -> (B, D) pooled features of ``layer`` (None: pre-logits), L2-normalised."""
    if layer is None:
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
    else:
        check_layer(model, layer)
        feats = model.forward_stages(x)[layer].mean((2, 3))
    feats = feats.float()
    return nn.functional.normalize(feats, dim=1) if normalize else feats


def embed_images(
    model: nn.Module,
    paths: Sequence[str | os.PathLike[str]],
    *,
    layer: int | None = None,
    normalize: bool = True,
    preprocessing: Preprocessing | None = None,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> tuple[list[str], torch.Tensor, list[str]]:
    """Embed image files: (names of the embedded files, (N, D) vectors, one line per unreadable file skipped)."""
    from .predict import model_preprocessing

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not hasattr(model, "forward_stages"):
        raise ValueError(f"embeddings need a MobileNet v1 backbone, got a {type(model).__name__}")
    check_layer(model, layer)  # before any image is read
    device = torch.device(device)
    model = model.eval().to(device)
    pre = preprocessing or model_preprocessing(model)
    names: list[str] = []
    vectors: list[torch.Tensor] = []
    problems: list[str] = []
    pending: list[tuple[str, torch.Tensor]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), unit="img", desc="embed", dynamic_ncols=True)

    def flush() -> None:
        if pending:
            vectors.append(embed_batch(model, torch.stack([t for _, t in pending]).to(device), layer=layer,
                                       normalize=normalize).cpu())
            names.extend(n for n, _ in pending)
            if bar is not None:
                bar.update(len(pending))
            pending.clear()

    for p in paths:
        try:
            pending.append((str(p), pre(read_image(p))))
        except ImageDecodeError as e:
            problems.append(f"{p}: {str(e).split(': ', 1)[-1]}")
            if bar is not None:
                bar.update(1)
            continue
        if len(pending) == batch_size:
            flush()
    flush()
    if bar is not None:
        bar.close()
    out = torch.cat(vectors) if vectors else torch.zeros(0, 0)
    return names, out, problems


def write_embeddings(path: str | os.PathLike[str], names: Sequence[str], vectors: torch.Tensor, *,
                     info: dict[str, Any] | None = None) -> list[Path]:
    """Write ``vectors`` with their ``names`` (format by suffix, see the module doc); returns the files written."""
    path = Path(path)
    suffix = path.suffix.lower()
    arr = vectors.detach().cpu().float().numpy()
    if suffix == ".npy":
        with atomic_write(path) as f:
            np.save(f, arr)
        side = path.with_suffix(".names.txt")
        with atomic_write(side, "w") as f:
            f.write("".join(f"{n}\n" for n in names))
        return [path, side]
    if suffix == ".safetensors":
        from safetensors.numpy import save

        meta = {"names": json.dumps(list(names)), **({"info": json.dumps(info)} if info else {})}
        with atomic_write(path) as f:
            f.write(save({"embeddings": np.ascontiguousarray(arr)}, metadata=meta))
        return [path]
    if suffix == ".csv":
        with atomic_write(path, "w") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["name"] + [f"e{i}" for i in range(arr.shape[1])])
            for n, row in zip(names, arr.tolist(), strict=True):
                w.writerow([n] + [f"{v:.7g}" for v in row])
        return [path]
    raise ValueError(f"embeddings file must end in one of {', '.join(SUFFIXES)}, got {path.name}")


def read_embeddings(path: str | os.PathLike[str]) -> tuple[list[str], torch.Tensor]:
    """Read what :func:`write_embeddings` wrote: (names, (N, D) vectors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
        names = path.with_suffix(".names.txt").read_text().splitlines()
    elif suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            arr = f.get_tensor("embeddings")
            names = json.loads((f.metadata() or {})["names"])
    elif suffix == ".csv":
        with open(path, newline="") as f:
            rows = list(csv.reader(f))[1:]
        names = [r[0] for r in rows]
        arr = np.array([[float(v) for v in r[1:]] for r in rows], dtype=np.float32)
    else:
        raise ValueError(f"embeddings file must end in one of {', '.join(SUFFIXES)}, got {path.name}")
    if len(names) != len(arr):
        raise ValueError(f"{path}: {len(names)} names for {len(arr)} vectors")
    return names, torch.from_numpy(np.asarray(arr, dtype=np.float32))


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, D), (M, D) -> (N, M) cosine similarities."""
    return nn.functional.normalize(a.float(), dim=1) @ nn.functional.normalize(b.float(), dim=1).T


def nearest(query: torch.Tensor, vectors: torch.Tensor, k: int = 5, *, exclude: int | None = None
            ) -> list[tuple[int, float]]:
    """The ``k`` rows of ``vectors`` most similar to the (D,) ``query`` (cosine), best first, as (index, similarity);
    ``exclude`` leaves one row out (the query itself, when it is among them)."""
    sims = cosine_similarity(query[None], vectors)[0]
    if exclude is not None:
        sims[exclude] = -float("inf")
    k = min(k, vectors.shape[0] - (exclude is not None))
    values, idx = sims.topk(k)
    return list(zip(idx.tolist(), values.tolist(), strict=True))


def precision_at_1(queries: torch.Tensor, gallery: torch.Tensor, query_groups: Sequence[Any],
                   gallery_groups: Sequence[Any], *, leave_one_out: bool = False) -> float:
    """Fraction of queries whose nearest gallery vector (cosine) has the query's group. With ``leave_one_out``
    the queries are the gallery, and each query's own row is left out."""
    sims = cosine_similarity(queries, gallery)
    if leave_one_out:
        sims.fill_diagonal_(-float("inf"))
    best = sims.argmax(1).tolist()
    hits = [query_groups[i] == gallery_groups[j] for i, j in enumerate(best)]
    return sum(hits) / len(hits) if hits else float("nan")
