"""A DataLoader with the settings that keep a GPU fed: worker processes, pinned memory, persistent workers.

Archive readers reopen their file in each worker by themselves (see ``archive``), so no ``worker_init_fn`` is
needed; workers are seeded by PyTorch (base seed + worker id), which the random transforms draw from.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


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
                      pin_memory=pin_memory, drop_last=drop_last, generator=generator, **extra)
