"""Header-scan throughput and peak memory of `catalog from-dicom` at two archive sizes.

Writes two synthetic PACS exports (`catalogs.pacs_export`, 5 series of 16 slices of
`--size` px per exam), then scans each in a fresh process (so peak memory is that scan's own)
with `--workers` processes and prints files/s, files/s per worker, files per CPU second (what
a core gives when it is not shared) and the peak resident
memory of the scanning process and of its workers (`resource.getrusage`, KiB on Linux).

    python bench/benchmarks/dicom_scan.py --exams 10,40 --workers 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCAN = """
import json, resource, sys, time
from orthodiff.catalogs.dicom_archive import scan_archive
root, workers = sys.argv[1], int(sys.argv[2])
from orthodiff.catalogs.readers import plane_of  # imported before timing, as the scan's own imports
import pydicom.pixels, nibabel
def cpu():
    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
start, cpu_start = time.perf_counter(), cpu()
scan = scan_archive(root, b"s" * 64, workers=workers)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu() - cpu_start, "series": len(scan.catalog), "rejected": int(scan.rejects["files"].sum()),
                  "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "workers_peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exams", default="10,40", help="Exams per archive, comma-separated (80 files each).")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--size", type=int, default=32, help="Image rows and columns.")
    args = parser.parse_args()
    from orthodiff.catalogs.pacs_export import write_pacs_export

    for exams in [int(e) for e in args.exams.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "archive"
            start = time.perf_counter()
            made = write_pacs_export(root, exams=exams, size=args.size, traps=False)
            written = time.perf_counter() - start
            result = json.loads(subprocess.run([sys.executable, "-c", SCAN, str(root), str(args.workers)],
                                               check=True, capture_output=True, text=True).stdout)
        rate = made["files"] / result["seconds"]
        print(f"{made['files']} files ({exams} exams, {result['series']} series, written in {written:.1f} s): "
              f"scan {result['seconds']:.2f} s, {rate:.0f} files/s, {rate / args.workers:.0f} files/s per worker, "
              f"{made['files'] / result['cpu_seconds']:.0f} files per CPU second, "
              f"peak RSS {result['peak_kib'] / 1024:.0f} MiB (workers {result['workers_peak_kib'] / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
