"""Bench: heads training on one thread (the rule for small models) vs a thread pool.

Trains the demo-sized heads on synthetic data twice in one process, once with the rule of
`training.is_small` (one thread) and once with it switched off (torch's default pool), and
the LightGBM comparator with `n_jobs` 1 (its default) and 2; prints the wall times, their
ratio and the largest difference between the two fits' probabilities.

    .venv/bin/python bench/benchmarks/heads_threads.py            # demo sizes: 78 exams, 3 planes x 64 channels
    .venv/bin/python bench/benchmarks/heads_threads.py --exams 2000 --channels 256
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import orthodiff.training as training
from orthodiff.heads.comparators import LightGBMComparator
from orthodiff.heads.fusion import FusionHead
from orthodiff.heads.probe import PlaneProbe


def timed(build, X, y) -> tuple[float, object]:
    start = time.perf_counter()
    model = build().fit(X, y)
    return time.perf_counter() - start, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exams", type=int, default=78)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    y = (rng.random((args.exams, 8)) < 0.3).astype(np.float32)
    planes = {p: rng.standard_normal((args.exams, args.channels)).astype(np.float32) for p in ("sagittal", "coronal", "axial")}
    activation = rng.standard_normal((args.exams, args.channels, 4, 8, 8)).astype(np.float32)
    cases = {
        "concat fusion (GAP vectors)": (lambda: FusionHead("concat", epochs=args.epochs, lr=3e-3, batch_size=16), planes),
        "SAP probe (activations)": (lambda: PlaneProbe("sap", epochs=args.epochs // 10, lr=3e-3, batch_size=16), activation),
    }
    print(f"{args.exams} rows, {args.channels} channels, torch pool of {torch.get_num_threads()} threads")
    for name, (build, X) in cases.items():
        small, model_small = timed(build, X, y)
        saved = training.SMALL_PARAMETERS
        training.SMALL_PARAMETERS = 0  # the rule off: torch's thread pool
        try:
            pool, model_pool = timed(build, X, y)
        finally:
            training.SMALL_PARAMETERS = saved
        report(name, small, pool, model_small, model_pool, X)
    one, one_model = timed(lambda: LightGBMComparator(n_jobs=1), planes, y)
    two, two_model = timed(lambda: LightGBMComparator(n_jobs=2), planes, y)
    report("LightGBM comparator", one, two, one_model, two_model, planes)


def report(name, one, pool, model_one, model_pool, X) -> None:
    same = np.abs(model_one.predict_proba(X) - model_pool.predict_proba(X)).max()
    print(f"{name}: one thread {one:.2f} s, thread pool {pool:.2f} s, ratio {pool / one:.2f}x, "
          f"max probability difference {same:.1e}")


if __name__ == "__main__":
    main()
