"""Bench: `store verify` on a small store holding every stored kind.

    python bench/benchmarks/verify_kinds.py --series 48 --build /tmp/verify.zarr   # make the store once
    python bench/benchmarks/verify_kinds.py --store /tmp/verify.zarr --repeat 5      # time verify_store

The store: `--series` random axial volumes of 16 x 8 x 8, the features of a micro backbone
(random weights) at one timestep and block, its box personas (1 sampling step) and the
first-order radiomic features of image, persona and residual. Run the timing with another
orthodiff on PYTHONPATH (e.g. an older commit) to compare what each verify covers and costs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


def build(path: str, series: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
    from helpers import make_volume_store, random_checkpoint

    from orthodiff.backbone.unet import UNetConfig
    from orthodiff.featurestore.extract import extract
    from orthodiff.personas.store import make_personas
    from orthodiff.radiomics.store import extract_radiomics

    make_volume_store(path, n=series, size=8)
    ckpt = random_checkpoint(f"{path}.pt", "axial", config=UNetConfig(8, 16, 32, (1, 1)))
    extract(path, ckpt, "axial", (10,), ("mid_0",), progress=False)
    make_personas(path, ckpt, "axial", grid=1, steps=1, jumps=1, progress=False, warn=lambda _: None)
    extract_radiomics(path, "axial", families=("first_order",), progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", help="make the store at this path")
    parser.add_argument("--series", type=int, default=48)
    parser.add_argument("--store", help="time `verify_store` on this store")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if args.build:
        build(args.build, args.series)
    if args.store:
        import orthodiff
        from orthodiff.featurestore.verify import verify_store

        verify_store(args.store)  # warm: imports, file cache
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            problems = verify_store(args.store)
            times.append(time.perf_counter() - start)
        print(f"{orthodiff.__file__}: verify_store median {statistics.median(times):.3f} s over {args.repeat} "
              f"(min {min(times):.3f}), {len(problems)} problems")


if __name__ == "__main__":
    main()
