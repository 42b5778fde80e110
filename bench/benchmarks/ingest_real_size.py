"""Bench: `ingest` of real-size series (256 x 256 px, 36 slices of 0.4 x 0.4 x 3.5 mm) as
NIfTI and as DICOM folders, half of them stored in a non-canonical order (rows and columns
transposed, slices reversed) so the reorientation runs: throughput and peak memory.

    python bench/benchmarks/ingest_real_size.py --series 16                  # about a minute on 2 cores
    python bench/benchmarks/ingest_real_size.py --series 16 64 --formats nifti  # memory does not grow with the count

Each ingest runs in a fresh process, whose peak resident memory (`ru_maxrss`) is reported
beside the same process's memory just before ingest (after the imports).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

SHAPE = (36, 256, 256)  # slices, rows, columns
PIXEL, THICKNESS = 0.4, 3.5


def write_cohort(folder: Path, n: int, fmt: str) -> Path:
    """`n` sagittal knee-sized series (int16, as scanners store them) and their catalog."""
    from nibabel.orientations import apply_orientation, inv_ornt_aff

    from orthodiff.catalogs.cohort import write_catalog
    from orthodiff.catalogs.tasks import get_task
    from orthodiff.catalogs.writers import affine, write_dicom_series, write_nifti

    folder.mkdir(parents=True, exist_ok=True)
    other = np.array([[1, 1], [0, -1], [2, -1]], dtype=float)  # columns <-> rows, flipped; slices reversed
    rows = []
    for k in range(n):
        rng = np.random.default_rng(k)
        z, y, x = np.meshgrid(*(np.linspace(-1, 1, s) for s in SHAPE), indexing="ij")
        data = (1000 * np.exp(-(x**2 + y**2 + z**2)) + 50 * rng.random(SHAPE)).astype(np.int16)
        grid = affine("sagittal", SHAPE, PIXEL, THICKNESS)
        if k % 2:
            data = apply_orientation(data.transpose(2, 1, 0), other).transpose(2, 1, 0)
            grid = grid @ inv_ornt_aff(other, SHAPE[::-1])
        sid = f"S{k:05d}"
        if fmt == "nifti":
            path = f"{sid}.nii.gz"
            write_nifti(folder / path, data, "sagittal", PIXEL, THICKNESS, grid=grid)
        else:
            path = sid
            write_dicom_series(folder / path, data.astype(np.float32), "sagittal", PIXEL, THICKNESS, sid, f"bench-{sid}",
                               grid=grid)
        rows.append({"series_id": sid, "case_id": sid, "patient_id": sid, "task": "knee", "joint": "knee",
                     "plane": "sagittal", "scan": 0, "path": path, "mask_path": None, "center": "A", "vendor": "V",
                     "field_strength": 3.0, "slice_thickness": THICKNESS, "split": "train",
                     **{label: 0 for label in get_task("knee").label_columns}})
    return write_catalog(pd.DataFrame(rows), folder / "catalog.parquet")


def _ingest(catalog: str, store: str, size: int) -> tuple[float, int, int, int]:
    """In a fresh process: (seconds, series ingested, KiB before ingest, peak KiB)."""
    from orthodiff.featurestore.ingest import ingest

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = ingest(catalog, store, size=size, progress=False)
    seconds = time.perf_counter() - start
    return seconds, int((result["status"] == "ingested").sum()), before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, nargs="+", default=[16], help="series per run (several: one run each)")
    parser.add_argument("--formats", default="nifti,dicom")
    parser.add_argument("--size", type=int, default=256, help="ingest --size")
    args = parser.parse_args()

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}")
    print("format  series  write_s  ingest_s  series/s  MiB_before_ingest  peak_MiB")
    for fmt in args.formats.split(","):
        for n in args.series:
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                catalog = write_cohort(Path(tmp) / "cohort", n, fmt)
                written = time.perf_counter() - start
                with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                    seconds, done, before, peak = pool.submit(_ingest, str(catalog), str(Path(tmp) / "s.zarr"), args.size).result()
            assert done == n, f"{n - done} series not ingested"
            print(f"{fmt:6s}  {n:6d}  {written:7.1f}  {seconds:8.1f}  {n / seconds:8.2f}  {before / 1024:17.0f}  {peak / 1024:8.0f}")


if __name__ == "__main__":
    main()
