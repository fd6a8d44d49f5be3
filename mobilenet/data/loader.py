"""DataLoaders: for training, with the settings that keep a GPU fed (worker processes, pinned memory, persistent
workers); for evaluation, one that leaves unreadable images out and lists them.

Archive readers reopen their file in each worker by themselves (see ``archive``), so no ``worker_init_fn`` is
needed; workers are seeded by PyTorch (base seed + worker id), which the random transforms draw from.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from .dataset import ImageDataset, LeaveOutUnreadable, Unreadable


def init_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: the worker ignores SIGTERM and stays quiet when its main process is gone.

    A SIGTERM sent to the whole process group (``timeout``, systemd, a batch scheduler) then reaches only the
    main process that matters: it stops cleanly (training saves its state first) and shuts its workers down.
    A worker killed first would make PyTorch raise "DataLoader worker ... is killed by signal" in the main
    process instead (a crash mid-save, or a traceback). A main process that stops while it fetches a batch's
    shared memory leaves the worker's file-descriptor server thread (``multiprocessing.resource_sharer``) with
    a reset connection: that thread's error is not printed (a traceback on the command's stderr, for nothing)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    default = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if not issubclass(args.exc_type, (ConnectionError, EOFError)):
            default(args)

    threading.excepthook = hook


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool = False, workers: int = 0,
                pin_memory: bool | None = None, drop_last: bool = False, sampler: Sampler | None = None,
                prefetch_factor: int = 4, generator: torch.Generator | None = None) -> DataLoader:
    """``DataLoader`` over ``dataset`` with ``workers`` processes (0: in this process).

    ``pin_memory`` defaults to "CUDA is available"; workers are persistent (no re-fork per epoch) and prefetch
    ``prefetch_factor`` batches each. With a ``sampler`` (e.g. DistributedSampler) ``shuffle`` must be False.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if sampler is not None and shuffle:
        raise ValueError("pass shuffle=False with a sampler (the sampler decides the order)")
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    extra = {"persistent_workers": True, "prefetch_factor": prefetch_factor} if workers > 0 else {}
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, num_workers=workers,
                      pin_memory=pin_memory, drop_last=drop_last, generator=generator,
                      worker_init_fn=init_worker if workers > 0 else None, **extra)


def collate_readable(batch: Sequence[Any]) -> tuple[Any, Any, list[Unreadable]]:
    """``(images, labels, unreadable)``: the readable samples collated as usual (``None, None`` when there is
    none), and the ``Unreadable`` entries listed."""
    unreadable = [item for item in batch if isinstance(item, Unreadable)]
    samples = [item for item in batch if not isinstance(item, Unreadable)]
    if not samples:
        return None, None, unreadable
    images, labels = default_collate(samples)
    return images, labels, unreadable


class ReadableBatches:
    """Iterates ``(images, labels)`` of the readable images only; ``skipped`` lists ``(name, reason)`` of every
    file left out: those the dataset's scan dropped, then those that failed to decode during iteration."""

    def __init__(self, loader: DataLoader, scanned: Sequence[tuple[str, str]] = ()) -> None:
        self.loader = loader
        self.scanned = list(scanned)
        self.unreadable: list[tuple[str, str]] = []

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return self.scanned + self.unreadable

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.unreadable = []
        for images, labels, unreadable in self.loader:
            self.unreadable += [(u.name, u.reason) for u in unreadable]
            if images is not None:
                yield images, labels


def make_eval_loader(dataset: Dataset, batch_size: int, *, workers: int = 0, pin_memory: bool | None = None,
                     indices: Sequence[int] | None = None, transform: Any = None) -> ReadableBatches:
    """Batches for evaluation, calibration or prediction over labelled images, in order: an unreadable image is
    left out and listed in ``.skipped`` (never replaced by another one, which would be scored under the wrong
    class). ``indices`` restricts it to a shard (e.g. this rank's part under DDP); ``transform`` replaces the
    dataset's own."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    # Any other map-style dataset of (image, label) pairs is batched as it is (it has no files to fail).
    view: Dataset = LeaveOutUnreadable(dataset, transform) if isinstance(dataset, ImageDataset) else dataset
    if indices is not None:
        view = torch.utils.data.Subset(view, list(indices))
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    loader = DataLoader(view, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin_memory,
                        collate_fn=collate_readable, worker_init_fn=init_worker if workers > 0 else None)
    return ReadableBatches(loader, getattr(dataset, "skipped", ()))
