"""Bench: what the content checksums cost `extract` and `ingest`.

    .venv/bin/python bench/benchmarks/checksums.py --series 32 --ingest-series 256 --ingest-size 128

Runs a real extraction (the `demo` backbone, random weights: the cheapest forward there is,
so the share of the checksum is as large as it gets) and appends of random volumes (the
store-writing part of ingest, without reading or preprocessing image files: again the
upper bound), timing inside the same runs how long the checksums took. Prints both
throughputs and the checksum share of each job's time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import orthodiff.featurestore.extract as extract_module
import orthodiff.featurestore.volumes as volumes_module
from orthodiff.featurestore.extract import extract
from orthodiff.featurestore.volumes import append_volumes

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from helpers import make_volume_store, random_checkpoint  # noqa: E402


class Timed:
    """Wraps a function, adding up the seconds spent in it."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *args):
        start = time.perf_counter()
        try:
            return self.fn(*args)
        finally:
            self.seconds += time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=32, help="series to extract (8 timesteps x 3 blocks each)")
    parser.add_argument("--ingest-series", type=int, default=256)
    parser.add_argument("--ingest-size", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = make_volume_store(Path(tmp) / "x.zarr", n=args.series, size=32)
        ckpt = random_checkpoint(Path(tmp) / "ax.pt", "axial")
        digest = extract_module.content_digest = Timed(extract_module.content_digest)
        start = time.perf_counter()
        extract(store, ckpt, "axial", progress=False)
        total = time.perf_counter() - start
        print(f"extract: {args.series / total:.2f} series/s over {total:.1f} s; checksums {digest.seconds:.3f} s "
              f"= {100 * digest.seconds / total:.2f}% of the job")

        digest = volumes_module.content_digest = Timed(volumes_module.content_digest)
        rng = np.random.default_rng(0)
        n, size, batch = args.ingest_series, args.ingest_size, 16
        start = time.perf_counter()
        for first in range(0, n, batch):
            meta = pd.DataFrame({"series_id": [f"s{i}" for i in range(first, first + batch)], "case_id": "c",
                                 "patient_id": "p", "plane": "axial", "scan": 0, "split": "train"})
            append_volumes(str(Path(tmp) / "i.zarr"), rng.uniform(-1, 1, (batch, 16, size, size)), meta)
        total = time.perf_counter() - start
        print(f"ingest (store writes, {size} px): {n / total:.1f} series/s over {total:.1f} s; checksums "
              f"{digest.seconds:.3f} s = {100 * digest.seconds / total:.2f}% of the job")


if __name__ == "__main__":
    main()
