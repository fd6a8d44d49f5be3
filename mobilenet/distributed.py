"""Distributed data parallel: set-up and teardown under ``torchrun``, rank-aware helpers, a
resumable sharded batch sampler.

The same command runs on one process or under ``torchrun --nproc-per-node N`` (multi-node too):
``setup()`` reads torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and joins a process group
(NCCL on GPU, gloo on CPU). Only rank 0 logs and saves; ``average_buffers`` makes the ranks'
BatchNorm statistics one before validating and saving, so the saved model is the validated one.

``ShardedBatchSampler`` replaces ``DistributedSampler`` because resume needs two things the stock
one lacks: starting mid-epoch at a given batch, and a layout where rank r's micro-batch m of
global step k is a fixed slice of one epoch-wide permutation, so N ranks x batch b give the same
samples per optimiser step as 1 rank x batch N*b (what the DDP equivalence test checks).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else CPU; clear error for a missing GPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


def setup(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); otherwise one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def teardown() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (identity on one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def average_buffers(model: nn.Module) -> nn.Module:
    """Average every floating-point buffer (BatchNorm running mean and variance) over the ranks, in place.

    Under DDP each rank's BatchNorm layers track the statistics of that rank's own micro-batches, so the
    ranks hold different models. Averaged before validation and before any save, every rank evaluates the
    same model and the saved weights are the ones that were validated (the mean of the ranks' running
    means equals what one process seeing all micro-batches in turn would track, up to the momentum's order).
    Identity on one process.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return model
    world = dist.get_world_size()
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(world)
    return model


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is True on any rank (used to stop all ranks on a signal)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def wrap_model(model: nn.Module, info: DistInfo, *, sync_bn: bool = False) -> nn.Module:
    """SyncBatchNorm (GPU only) then DistributedDataParallel when running on more than one rank."""
    if not info.distributed:
        return model
    if sync_bn:
        if info.device.type != "cuda":
            raise ValueError("sync_bn needs CUDA: PyTorch's SyncBatchNorm does not run on CPU (gloo)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP and/or torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod  # type: ignore[assignment]
        else:
            return model


class ShardedBatchSampler(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Yields this rank's micro-batches as lists of ``(epoch, index)`` pairs; resumable mid-epoch.

    Each epoch draws one permutation of ``range(n)`` from ``(seed, epoch)``; global step k uses
    ``perm[k*B:(k+1)*B]`` with ``B = global_batch``; that slice is cut into ``world_size *
    accum_steps`` equal micro-batches of ``b = B / (world_size * accum_steps)``, and micro-batch m of
    rank r is slice ``m * world_size + r``. The incomplete last global batch is dropped so every rank
    takes the same number of equal steps. The epoch travels with each index so datasets can seed
    per-sample augmentation without shared state (works with persistent workers).
    """

    def __init__(
        self, n: int, *, global_batch: int, rank: int = 0, world_size: int = 1, accum_steps: int = 1,
        seed: int = 0, shuffle: bool = True,
    ) -> None:
        parts = world_size * accum_steps
        if global_batch % parts:
            raise ValueError(f"batch_size {global_batch} must be divisible by world_size x accum_steps = "
                             f"{world_size} x {accum_steps}")
        if n < global_batch:
            raise ValueError(f"the training set has {n} samples, fewer than one batch of {global_batch}")
        self.n, self.global_batch, self.rank, self.world_size = n, global_batch, rank, world_size
        self.accum_steps, self.seed, self.shuffle = accum_steps, seed, shuffle
        self.micro = global_batch // parts
        self.epoch = 0
        self.start_step = 0

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.global_batch

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch's permutation and skip its first ``start_step`` optimiser steps (resume)."""
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.accum_steps

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
        else:
            perm = list(range(self.n))
        b, w = self.micro, self.world_size
        for k in range(self.start_step, self.steps_per_epoch):
            base = k * self.global_batch
            for m in range(self.accum_steps):
                lo = base + (m * w + self.rank) * b
                yield [(self.epoch, i) for i in perm[lo:lo + b]]
