"""Bench: `orthodiff synth` wall time and `orthodiff ingest` series per second.

    .venv/bin/python bench/benchmarks/synth_ingest.py --cases 200 --size 64       # synth target: < 2 min
    .venv/bin/python bench/benchmarks/synth_ingest.py --cases 200 --size 256 --ingest-size 256
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from orthodiff.catalogs.synth import synthesize
from orthodiff.featurestore.ingest import ingest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--size", type=int, default=64, help="synth in-plane matrix")
    parser.add_argument("--ingest-size", type=int, default=256, help="ingest --size")
    parser.add_argument("--workers", type=int, default=None, help="synth processes (default: cores)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        catalog = synthesize("knee", args.cases, args.size, 0, Path(tmp) / "cohort", progress=False, workers=args.workers)
        synth_s = time.perf_counter() - start
        start = time.perf_counter()
        result = ingest(catalog, str(Path(tmp) / "store.zarr"), size=args.ingest_size, progress=False)
        ingest_s = time.perf_counter() - start
    n = int((result["status"] == "ingested").sum())
    print(f"cores: {os.cpu_count()}")
    print(f"synth  {args.cases} knee exams at --size {args.size}: {synth_s:.1f} s ({args.cases / synth_s:.2f} exams/s)")
    print(f"ingest {n} series at --size {args.ingest_size}: {ingest_s:.1f} s ({n / ingest_s:.1f} series/s)")


if __name__ == "__main__":
    main()
