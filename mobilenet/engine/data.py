"""How the engine feeds a task: per-sample seeded datasets through a DataLoader, or whole batches on the device.

Both paths draw their order from :class:`~mobilenet.distributed.ShardedBatchSampler` (one permutation
per (seed, epoch); rank r's micro-batch m of step k is a fixed slice of it) and their randomness from
seeds fixed by (seed, epoch, sample or step), so neither depends on how many steps ran in this
process: a resumed run sees exactly the batches an uninterrupted one would.

* :class:`SeededDataset` wraps a map-style dataset for the DataLoader path: each sample's random
  augmentation is a pure function of (seed, epoch, index).
* :class:`DeviceData` is the fast path for small sets (CIFAR-10): the whole set decoded once into one
  uint8 tensor on the device, batches gathered, augmented and normalised there; no workers, no
  per-image Python work.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data.loader import init_worker
from ..distributed import DistInfo, ShardedBatchSampler


class SeededDataset(torch.utils.data.Dataset):
    """Wraps a map-style dataset; ``ds[(epoch, i)]`` seeds Python/NumPy/torch RNGs from
    ``(seed, epoch, i)`` before ``base[i]``, so random augmentation is a pure function of the sample
    and the epoch (same result in any worker, after any resume). In the main process the global RNG
    states are saved and restored around the call, so loading does not disturb training's RNG."""

    def __init__(self, base: torch.utils.data.Dataset, seed: int) -> None:
        self.base = base
        self.seed = seed

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int] | int) -> Any:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        s = (self.seed * 1_000_003 + epoch) * 2_147_483_647 + index
        s %= 2**63
        in_worker = torch.utils.data.get_worker_info() is not None
        saved = None if in_worker else (random.getstate(), np.random.get_state(), torch.get_rng_state())
        try:
            random.seed(s)
            np.random.seed(s % 2**32)
            torch.manual_seed(s)
            return self.base[index]
        finally:
            if saved is not None:
                random.setstate(saved[0])
                np.random.set_state(saved[1])
                torch.set_rng_state(saved[2])


@dataclass
class DeviceData:
    """A decoded set on the device: ``images`` (N, C, H, W) uint8, ``labels`` (N,) int64.

    ``augment(batch, generator)`` transforms a uint8 batch on the device (e.g. CIFAR's crop + flip),
    ``normalize(batch)`` makes it a model input.
    """

    images: torch.Tensor
    labels: torch.Tensor
    normalize: Callable[[torch.Tensor], torch.Tensor]
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, sampler: ShardedBatchSampler, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The sampler's micro-batches of the current epoch, each augmented from its own seed."""
        device = self.images.device
        generator = torch.Generator(device=device)
        step = sampler.start_step * sampler.accum_steps
        for keys in sampler:
            idx = torch.tensor([i for _, i in keys], device=device)
            x = self.images[idx]
            if self.augment is not None:
                key = ((seed * 1_000_003 + sampler.epoch) * 1_000_033 + step) * 1009 + sampler.rank
                generator.manual_seed(key % 2**63)
                x = self.augment(x, generator)
            step += 1
            yield self.normalize(x), self.labels[idx]

    def shard(self, info: DistInfo, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's share for evaluation (every world_size-th image), in order, normalised, no augmentation."""
        idx = torch.arange(info.rank, len(self), info.world_size, device=self.images.device)
        for start in range(0, len(idx), batch_size):
            chunk = idx[start:start + batch_size]
            yield self.normalize(self.images[chunk]), self.labels[chunk]


def loader(dataset: torch.utils.data.Dataset, sampler: ShardedBatchSampler, *, seed: int, workers: int,
           pin_memory: bool, collate: Callable[[list[Any]], Any] | None = None) -> tuple[Any, torch.Generator]:
    """A DataLoader over ``SeededDataset(dataset)`` in ``sampler``'s order, and its own generator (reseeded per
    epoch by the engine, so creating an iterator never draws from the global RNG)."""
    generator = torch.Generator()
    return torch.utils.data.DataLoader(
        SeededDataset(dataset, seed), batch_sampler=sampler, num_workers=workers, pin_memory=pin_memory,
        persistent_workers=workers > 0, generator=generator, collate_fn=collate,
        worker_init_fn=init_worker if workers > 0 else None), generator  # SIGTERM: the main process decides
