"""The fast path for small datasets: decode every image once into one uint8 tensor.

``images, labels = load_tensor_dataset("cifar10:../shared/data/cifar10#train")`` gives ``(N, 3, H, W)`` uint8
and ``(N,)`` int64; move both to the GPU once and augment whole batches there (``batch_augment``), so an epoch
costs no decoding and no DataLoader workers. The result also carries ``class_names`` and ``skipped``.
Memory: N x 3 x H x W bytes (CIFAR-10 train: 150 MB; at 224 px, 150 kB per image: keep this for small sets).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from .dataset import ArrayImageDataset, ImageDataset, SubsetView, warn_skipped
from .decode import ImageDecodeError
from .sources import open_image_dataset

CHUNK = 256  # images per thread task


class DecodedImages(tuple):
    """``(images, labels)``: unpacks as a pair, and carries ``class_names``, ``skipped`` and ``names``."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    skipped: list[tuple[str, str]]

    def __new__(cls, images: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
                skipped: Sequence[tuple[str, str]] = ()) -> DecodedImages:
        self = super().__new__(cls, (images, labels))
        self.images, self.labels = images, labels
        self.class_names, self.skipped = list(class_names), list(skipped)
        return self


def _fit(arr: np.ndarray, size: int | None) -> np.ndarray:
    if size is not None and arr.shape[:2] != (size, size):
        return np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR))
    return arr


def decode_all(dataset: ImageDataset, *, size: int | None = None, threads: int | None = None,
               progress: bool = True) -> DecodedImages:
    """Decode every image of ``dataset`` (its transform is ignored) into one ``(N, 3, H, W)`` uint8 tensor.

    Unreadable images are left out and listed in ``skipped`` (no replacement: nothing is duplicated here).
    Encoded sources decode on ``threads`` threads (default: all cores; Pillow and simplejpeg release the GIL),
    each taking chunks of ``CHUNK`` images so that thread hand-offs cost nothing next to decoding.
    """
    base, indices = dataset, None
    if isinstance(dataset, SubsetView):
        base, indices = dataset.base, dataset.indices
    if isinstance(base, ArrayImageDataset) and (size is None or base.images.shape[1:3] == (size, size)):
        # Already decoded: one array slice, no per-image work.
        arr = base.images if indices is None else base.images[np.asarray(indices, dtype=np.int64)]
        images = torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))
        return DecodedImages(images, torch.as_tensor(dataset.targets, dtype=torch.long), dataset.class_names,
                             dataset.skipped)

    def load_chunk(chunk: range) -> list[np.ndarray | tuple[str, str]]:
        out: list[np.ndarray | tuple[str, str]] = []
        for i in chunk:
            try:
                out.append(_fit(dataset.load_array(i), size))
            except ImageDecodeError as error:
                out.append((dataset.sample_name(i), str(error).split(": ", 1)[-1]))
        return out

    n = len(dataset)
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    skipped = list(dataset.skipped)
    chunks = [range(start, min(n, start + CHUNK)) for start in range(0, n, CHUNK)]
    from tqdm import tqdm

    with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool, \
            tqdm(total=n, desc="decoding", unit="img", disable=not progress, leave=False) as bar:
        for chunk, results in zip(chunks, pool.map(load_chunk, chunks), strict=True):  # map() keeps the order
            for i, result in zip(chunk, results, strict=True):
                if isinstance(result, tuple):
                    skipped.append(result)
                    continue
                if arrays and result.shape != arrays[0].shape:
                    raise ValueError(f"{dataset.sample_name(i)} is {result.shape[1]}x{result.shape[0]} but earlier "
                                     f"images are {arrays[0].shape[1]}x{arrays[0].shape[0]}: pass size=... to resize "
                                     f"all images to one size")
                arrays.append(result)
                labels.append(dataset.targets[i])
            bar.update(len(chunk))
    if not arrays:
        raise ValueError(f"no readable image in {dataset!r}")
    warn_skipped(skipped[len(dataset.skipped):], f"decoding {dataset!r}")  # the scan warned about its own
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return DecodedImages(images, torch.as_tensor(labels, dtype=torch.long), dataset.class_names, skipped)


def load_tensor_dataset(source: str | os.PathLike[str] | ImageDataset, *, size: int | None = None,
                        class_names: Sequence[str] | None = None, threads: int | None = None,
                        progress: bool = True) -> DecodedImages:
    """``(uint8 images (N, 3, H, W), int64 labels (N,))`` for a dataset source (see ``open_image_dataset``).

    ``size`` resizes every image to ``size`` x ``size`` (required when the images differ in size). The result also
    has ``.class_names`` and ``.skipped``.
    """
    # check="none": every image is fully decoded below anyway, which catches strictly more than the quick check.
    dataset = source if isinstance(source, ImageDataset) else open_image_dataset(source, class_names=class_names,
                                                                                 check="none")
    return decode_all(dataset, size=size, threads=threads, progress=progress)
