"""Device choice and GPU pinning of local Dask workers, checked on a CPU host by pretending
it has GPUs (what each worker process is given: its `CUDA_VISIBLE_DEVICES` and resources)."""

import os

import torch

from orthodiff import devices


def test_workers_take_the_gpus_in_turn(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(devices, "gpu_count", lambda: 8)
    assert devices.worker_gpus(8) == [str(i) for i in range(8)]  # one worker per GPU of the node
    assert devices.worker_gpus(3) == ["0", "1", "2"]
    assert devices.worker_gpus(10)[8:] == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")  # a job given two GPUs stays on them
    monkeypatch.setattr(devices, "gpu_count", lambda: 2)
    assert devices.worker_gpus(3) == ["4", "6", "4"]


def test_no_gpu_means_no_pinning(monkeypatch):
    monkeypatch.setattr(devices, "gpu_count", lambda: 0)
    assert devices.worker_gpus(2) == [None, None]
    assert devices.resolve_device("cpu") == torch.device("cpu")


def _given(dask_worker) -> tuple:
    return os.environ.get("CUDA_VISIBLE_DEVICES"), dict(dask_worker.state.total_resources), dask_worker.state.nthreads


def test_local_cluster_pins_each_worker_to_its_gpu(monkeypatch):
    from dask.distributed import Client

    from orthodiff.featurestore.jobs import local_cluster

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(devices, "gpu_count", lambda: 2)
    with local_cluster(2) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=120)
        given = list(client.run(_given).values())
    assert sorted(given) == [("0", {"GPU": 1}, 1), ("1", {"GPU": 1}, 1)]
