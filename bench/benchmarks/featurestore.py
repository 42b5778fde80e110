"""Bench: the feature store's storage path (random activations, no backbone needed).

    .venv/bin/python bench/benchmarks/featurestore.py --series 512 --open-series 10000

Prints: write throughput of whole-shard writes through the store's arrays vs one plain
`zarr` write of the same data; read amplification (bytes read / bytes needed) for one
(timestep, block) slab over all series and for every configuration of one series; bytes
per series on disk vs raw float32; `open_store` latency on a store of many series.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from zarr.storage import LocalStore, WrapperStore

from orthodiff.backbone import PRESETS
from orthodiff import open_store
from orthodiff.featurestore.features import SHARD_SERIES, plane_path, prepare_plane
from orthodiff.featurestore.store import consolidate, open_root


class CountingStore(WrapperStore):
    """Counts the bytes every read returns."""

    bytes_read = 0

    async def get(self, key, prototype, byte_range=None):
        buf = await self._store.get(key, prototype, byte_range)
        if buf is not None and not key.endswith("zarr.json"):
            CountingStore.bytes_read += len(buf)
        return buf


def make_plane(store: str, n: int, timesteps, blocks, shape) -> zarr.Group:
    open_root(store, create=True)
    prov = {"backbone_id": "bench", "preset": "bench", "config": {}, "noise_seed": 0, "noise_policy": "", "schema": 1,
            "preprocessing": ""}
    series = [{"series_id": f"s{i:06d}", "case_id": f"c{i}", "patient_id": f"p{i}", "scan": 0} for i in range(n)]
    return prepare_plane(store, prov, "axial", series, list(timesteps), list(blocks), shape, "float16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=512)
    parser.add_argument("--preset", default="tiny", choices=list(PRESETS))
    parser.add_argument("--open-series", type=int, default=10000)
    args = parser.parse_args()
    shape = PRESETS[args.preset].middle_shape
    timesteps, blocks = (10, 50, 100, 150), ("mid_0", "mid_1", "mid_2")
    rng = np.random.default_rng(0)
    data = rng.standard_normal((args.series, len(timesteps), len(blocks), *shape)).astype("float16")

    with tempfile.TemporaryDirectory() as tmp:
        store = f"{tmp}/store.zarr"
        group = make_plane(store, args.series, timesteps, blocks, shape)
        start = time.perf_counter()
        for s0 in range(0, args.series, SHARD_SERIES):
            rows = slice(s0, s0 + SHARD_SERIES)
            for ti in range(len(timesteps)):
                for bi in range(len(blocks)):
                    group["activation"][rows, ti, bi] = data[rows, ti, bi]
        ours = time.perf_counter() - start
        plain = zarr.create_array(f"{tmp}/plain.zarr", shape=data.shape, chunks=(1, 1, 1, *shape), dtype="float16")
        start = time.perf_counter()
        plain[:] = data
        theirs = time.perf_counter() - start
        mib = data.nbytes / 2**20
        print(f"write {mib:.0f} MiB ({args.series} series x {len(timesteps)} timesteps x 3 blocks, {args.preset}): "
              f"store path {mib / ours:.0f} MiB/s, plain zarr {mib / theirs:.0f} MiB/s, ratio {theirs / ours:.2f}")

        disk = sum(p.stat().st_size for p in Path(store, plane_path("bench", "axial"), "activation").rglob("*") if p.is_file())
        raw32 = data.size * 4 / args.series
        print(f"bytes per series on disk {disk / args.series:,.0f} vs raw float32 {raw32:,.0f} "
              f"({disk / args.series / raw32:.2f}x; float16 + blosc-zstd on random values)")

        counted = zarr.open_group(CountingStore(LocalStore(store)), path=plane_path("bench", "axial"), mode="r")
        for name, index in (("one (timestep, block) slab, all series", (slice(None), 1, 2)),
                            ("every configuration of one series", (7,))):
            CountingStore.bytes_read = 0
            needed = counted["activation"][index].nbytes
            print(f"read amplification, {name}: {CountingStore.bytes_read / needed:.3f} (compressed bytes read / bytes needed)")

        big = f"{tmp}/big.zarr"
        make_plane(big, args.open_series, timesteps, blocks, shape)
        consolidate(big)
        start = time.perf_counter()
        tree = open_store(big)
        print(f"open_store on {tree['features/bench/axial'].sizes['series']:,} series: {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
