"""The job machinery every stored kind's writer uses: a `Task` (one shard's run of series)
and `run_tasks`, which runs a writer's task function here, on a local Dask cluster or on a
remote one (which series of a stored kind are complete is `series_groups.complete_rows`).
Shared by feature extraction, personas and radiomics; it runs no network itself (torch is
imported only to set a worker's threads)."""

from __future__ import annotations

import copy
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from orthodiff.errors import OrthodiffError
from orthodiff.progress import Advance, maybe_progress


@dataclass(frozen=True)
class Task:
    """One run of series (one shard index), their rows in the volumes, and the (timestep,
    block) units it still lacks."""

    shard: int
    start: int
    series: tuple[str, ...]
    units: tuple[tuple[int, str], ...]
    volume_rows: tuple[int, ...]


def local_cluster(workers: int):
    """A local Dask cluster of `workers` single-threaded processes; on a GPU host each is
    pinned to one GPU in turn (`devices.worker_gpus`: it sees only that one, as ``cuda``)
    and declares the resource ``GPU=1``, so `--workers` = the GPU count uses every GPU."""
    from dask.distributed import LocalCluster

    from orthodiff.devices import worker_gpus  # imports torch: only where a cluster starts

    cluster = LocalCluster(n_workers=0, threads_per_worker=1, processes=True)
    for name, gpu in enumerate(worker_gpus(workers)):
        spec = copy.deepcopy(cluster.new_spec)
        if gpu is not None:
            options = spec["options"]
            options["env"] = {**(options.get("env") or {}), "CUDA_VISIBLE_DEVICES": gpu}
            options["resources"] = {**(options.get("resources") or {}), "GPU": 1}
        cluster.worker_spec[name] = spec
    cluster.scale(workers)
    return cluster


def _with_threads(function, threads: int | None, *args, **kwargs):
    if threads:
        import torch

        torch.set_num_threads(threads)
    return function(*args, **kwargs)


def run_tasks(function, tasks: list, args: tuple, description: str, total: int, workers: int | None = None,
              scheduler: str | None = None, progress: bool | Advance = True, read_ahead=None) -> list:
    """Run `function(task, *args)` for every task and return its results (each an int, the
    series it did, or a dict with a `series` count): here, on a local Dask cluster of
    `workers` processes (sharing the cores), or on the cluster at `scheduler`; `progress`
    counts series. In this process, `read_ahead(task)` (the task's input) runs for the next
    task while the current one computes and is passed as `volumes=`. Shared by extract,
    persona and radiomics."""
    cores = os.cpu_count() or 1
    if workers is not None and not scheduler and not 1 <= workers <= cores:
        raise OrthodiffError(f"--workers {workers}: expected 1 to {cores} (this machine's cores), or a cluster's --scheduler")
    results = []
    with maybe_progress(progress, description, total, "series") as advance:

        def done(result) -> None:
            results.append(result)
            advance(result if isinstance(result, int) else result["series"])

        if workers or scheduler:
            from dask.distributed import Client, as_completed

            cluster = None if scheduler else local_cluster(workers)
            # local workers share the cores instead of each starting one torch thread per core
            threads = max(1, (os.cpu_count() or 1) // workers) if workers and not scheduler else None
            with Client(scheduler or cluster) as client:
                # keys named after `function`, as a dashboard shows them
                futures = [client.submit(_with_threads, function, threads, t, *args, key=f"{function.__name__}-{uuid.uuid4().hex}")
                           for t in tasks]
                for future in as_completed(futures):
                    done(future.result())
            if cluster is not None:
                cluster.close()
        elif read_ahead is None:
            for task in tasks:
                done(function(task, *args))
        else:
            with ThreadPoolExecutor(1, thread_name_prefix="orthodiff-prefetch") as reader:
                upcoming = reader.submit(read_ahead, tasks[0]) if tasks else None
                for i, task in enumerate(tasks):
                    volumes = upcoming.result()
                    upcoming = reader.submit(read_ahead, tasks[i + 1]) if i + 1 < len(tasks) else None
                    done(function(task, *args, volumes=volumes))
    return results
