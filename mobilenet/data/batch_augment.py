"""Augmentation of whole batches on the device that holds them (GPU or CPU): no per-image Python work.

Paired with ``load_tensor_dataset``: keep the uint8 dataset on the GPU, draw a batch of indices, then
``random_crop_flip`` (CIFAR's pad-4 crop + flip), optionally ``cutout``, then ``normalize_batch``. Each function
takes a ``torch.Generator`` on the batch's device for reproducible runs (``None``: the global generator).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from ..preprocessing import Preprocessing


def _check_batch(x: torch.Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"expected a batch (B, C, H, W), got shape {tuple(x.shape)}")


def random_crop_flip(x: torch.Tensor, padding: int = 4, *, flip: bool = True,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image random crop after zero padding, and random horizontal flip, of a ``(B, C, H, W)`` batch.

    Same distribution as ``PadRandomCrop(padding)`` + ``RandomHorizontalFlip()`` per image; any dtype (uint8 ok).
    One gather over precomputed row/column indices, so the cost is one pass over the batch.
    """
    _check_batch(x)
    b, c, h, w = x.shape
    device = x.device
    padded = F.pad(x, (padding, padding, padding, padding)) if padding > 0 else x  # (B, C, H+2p, W+2p), zeros
    dy = torch.randint(0, 2 * padding + 1, (b, 1), device=device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b, 1), device=device, generator=generator)
    rows = dy + torch.arange(h, device=device)  # (B, H) source rows of each output row
    cols = dx + torch.arange(w, device=device)  # (B, W) source columns
    if flip:
        mirrored = torch.rand(b, 1, device=device, generator=generator) < 0.5
        cols = torch.where(mirrored, cols.flip(1), cols)
    batch = torch.arange(b, device=device).view(b, 1, 1, 1)
    channel = torch.arange(c, device=device).view(1, c, 1, 1)
    return padded[batch, channel, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


def cutout(x: torch.Tensor, size: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero one ``size`` x ``size`` square per image at a random centre (clipped at the borders; DeVries 2017)."""
    _check_batch(x)
    if size <= 0:
        return x
    b, _, h, w = x.shape
    device = x.device
    cy = torch.randint(0, h, (b, 1, 1), device=device, generator=generator)
    cx = torch.randint(0, w, (b, 1, 1), device=device, generator=generator)
    ys = torch.arange(h, device=device).view(1, h, 1)
    xs = torch.arange(w, device=device).view(1, 1, w)
    top, left = cy - size // 2, cx - size // 2  # (B, 1, 1) corner of each square, possibly off the image
    inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)  # (B, H, W)
    return x.masked_fill(inside.unsqueeze(1), 0)


def normalize_batch(x: torch.Tensor, preprocessing: Preprocessing, *,
                    channels_last: bool = False, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (or float pixel-valued) ``(B, 3, H, W)`` RGB -> normalised model input (``preprocessing``'s
    mean/std/channel order), optionally in channels_last memory format."""
    _check_batch(x)
    out = preprocessing.normalize(x).to(dtype)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def iterate_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shuffle: bool = True,
                    drop_last: bool = False,
                    generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(images[idx], labels[idx])`` batches of a tensor dataset (on its own device), shuffled per call."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"{n} images but {len(labels)} labels")
    if shuffle:
        order = torch.randperm(n, device=images.device if generator is None else generator.device,
                               generator=generator).to(images.device)
    else:
        order = torch.arange(n, device=images.device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield images[idx], labels[idx.to(labels.device)]
