"""Bench: peak memory of an SAP probe trained from a Zarr slab of 2,000 vs 8,000 series.

The slab is one (plane, timestep, block) of the paper preset (256 channels x 1 x 16 x 16,
float16, 128 KiB per series) written to a local Zarr store with random activations and a
planted label signal. Each size trains in a fresh process (one epoch, 256-series blocks)
and reports its peak RSS; the probe streams, so the peak should not grow with the series.

    .venv/bin/python bench/benchmarks/heads_sap_memory.py --sizes 2000,8000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from memory import peak_rss_mib

CHANNELS, SPATIAL, LABELS = 256, (1, 16, 16), 8

def labels_for(n: int) -> np.ndarray:
    return (np.random.default_rng(1).random((n, LABELS)) < 0.3).astype(np.float32)

def write_slab(path: Path, n: int) -> None:
    import dask.array as da
    import xarray as xr

    noise = da.random.default_rng(0).standard_normal((n, CHANNELS, *SPATIAL), chunks=(64, CHANNELS, *SPATIAL), dtype=np.float32)
    signal = np.zeros((n, CHANNELS, 1, 1, 1), np.float32)
    signal[:, :LABELS, 0, 0, 0] = 0.5 * labels_for(n)
    act = (noise + da.from_array(signal, chunks=(64, CHANNELS, 1, 1, 1))).astype(np.float16)
    ds = xr.Dataset({"activation": (("series", "channel", "z", "y", "x"), act)},
                    coords={"series": np.array([f"S{i:06d}" for i in range(n)], dtype=object)})
    ds.to_zarr(path, mode="w", consolidated=False)

def child(path: str, n: int) -> None:
    import torch
    import xarray as xr

    from orthodiff.heads.probe import PlaneProbe

    torch.set_num_threads(2)
    X = xr.open_zarr(path, consolidated=False)["activation"]
    base = peak_rss_mib()
    start = time.perf_counter()
    probe = PlaneProbe("sap", epochs=1, lr=5e-4, batch_size=32, block_rows=256).fit(X.data, labels_for(n))
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    assert np.isfinite(probe.net_.classifier.weight.detach().numpy()).all()
    print(json.dumps({"series": n, "peak_mib": peak, "before_fit_mib": base, "fit_s": seconds}))

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,8000")
    parser.add_argument("--child", nargs=2, metavar=("STORE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(s) for s in args.sizes.split(",")]:
            path = Path(tmp) / f"slab{n}.zarr"
            start = time.perf_counter()
            write_slab(path, n)
            print(f"wrote {n} series ({n * CHANNELS * np.prod(SPATIAL) * 2 / 2**20:.0f} MiB float16) in {time.perf_counter() - start:.1f} s")
            out = subprocess.run([sys.executable, __file__, "--child", str(path), str(n)], check=True, capture_output=True, text=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = results[-1]
            print(f"{n} series: peak RSS {r['peak_mib']:.0f} MiB (after imports and open {r['before_fit_mib']:.0f} MiB), "
                  f"one SAP epoch + statistics pass {r['fit_s']:.1f} s")
    first, last = results[0], results[-1]
    print(f"peak RSS ratio {last['series']} / {first['series']} series: {last['peak_mib'] / first['peak_mib']:.2f} "
          f"(growth above the pre-fit baseline: {(last['peak_mib'] - last['before_fit_mib']):.0f} vs "
          f"{(first['peak_mib'] - first['before_fit_mib']):.0f} MiB)")

if __name__ == "__main__":
    main()
