"""The one place that picks a torch device: the GPU when there is one, never required.

Local Dask workers on a GPU host are pinned one device each (`worker_gpus`): a worker
process sees only its own GPU (``CUDA_VISIBLE_DEVICES``), so `resolve_device` in it picks
that GPU as ``cuda`` (``cuda:0`` of what it sees). This is what dask-cuda's
``LocalCUDACluster`` does; it is done here with plain ``distributed`` because dask-cuda pins
older dask and distributed releases than the project's.
"""

from __future__ import annotations

import os

import torch


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`device` as a `torch.device`; None means CUDA when available (in a pinned worker, its
    own GPU), else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def gpu_count() -> int:
    """The GPUs this process may use (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def worker_gpus(workers: int) -> list[str | None]:
    """The ``CUDA_VISIBLE_DEVICES`` value of each of `workers` local worker processes: the
    host's GPUs in turn (``--workers`` = the GPU count gives one worker per GPU), or None for
    every worker on a host without GPUs. Indices are those of this process's own
    ``CUDA_VISIBLE_DEVICES`` when it is set, so a job restricted to some GPUs stays on them."""
    count = gpu_count()
    if not count:
        return [None] * workers
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    names = visible[:count] if len(visible) >= count else [str(i) for i in range(count)]
    return [names[i % count] for i in range(workers)]
