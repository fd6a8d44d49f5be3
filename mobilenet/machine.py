"""How much of this machine a command may use: CPU threads for PyTorch's own kernels and DataLoader worker
processes, sized from the cores this process may run on and how busy they already are.

Why: PyTorch starts one OpenMP thread per physical core and its threads spin while they wait for each other, so
on a shared machine whose cores are already busy every parallel region waits for a descheduled thread. On a
2-core machine running other jobs, the default 2 threads trained at 20 img/s where 1 thread did 257 img/s.
``default_threads`` therefore counts only the cores that are idle now (1-minute load average), never fewer than
one; ``--threads`` overrides it.
"""

from __future__ import annotations

import os


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


def busy_cores() -> int:
    """Cores already busy with other work: the 1-minute load average, rounded (0 where the OS has none)."""
    try:
        return int(os.getloadavg()[0] + 0.5)
    except (AttributeError, OSError):  # pragma: no cover - Windows
        return 0


def default_threads(ceiling: int | None = None) -> int:
    """Intra-op threads for this process: the idle cores, at least 1, at most ``ceiling`` (default: PyTorch's
    own default, one per physical core)."""
    if ceiling is None:
        import torch

        ceiling = torch.get_num_threads()
    return max(1, min(ceiling, usable_cores() - busy_cores()))


def default_workers(cap: int = 8) -> int:
    """DataLoader worker processes: one per idle core beyond the main process's, at most ``cap`` (0 on one core
    or on a busy machine, where a worker would only compete with the main process for a core)."""
    return max(0, min(cap, usable_cores() - busy_cores() - 1))


def set_threads(threads: int | None) -> int:
    """Set PyTorch's intra-op threads (``None``: ``default_threads()``) and return the number used."""
    import torch

    n = default_threads() if threads is None else threads
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    torch.set_num_threads(n)
    return n
