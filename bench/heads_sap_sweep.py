"""Bench: SAP sweep of one plane (8 timesteps x 3 blocks), batched vs one probe at a time.

    .venv/bin/python bench/heads_sap_sweep.py --series 2000                    # the issue's size
    .venv/bin/python bench/heads_sap_sweep.py --series 2000 --epochs 1 --alone 2  # a loaded 2-core machine

Synthetic float16 activations of the `tiny` middle shape (128 channels x 2 x 8 x 8) with a
label signal in some configurations, held in memory (so the ratio is compute, not reads:
the one-by-one sweep on a store also reads every activation once per configuration).
One at a time = ``PlaneProbe("sap")`` fitted per configuration (what ``sweep(...,
batched=False)`` does); batched = ``BatchedSAPProbes``; both at the paper's probe settings
unless given. ``--alone M`` trains only the first M configurations one at a time and scales
their time by K / M (every configuration has the same shapes, so the same cost); validation
macro AUROC is compared on those M.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from orthodiff.heads.batched_sap import BatchedSAPProbes
from orthodiff.heads.metrics import auroc_per_label
from orthodiff.heads.probe import PlaneProbe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=2000)
    parser.add_argument("--configs", type=int, default=24, help="timesteps x blocks")
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--labels", type=int, default=3)
    parser.add_argument("--alone", type=int, default=None, help="configurations trained one at a time (default all)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    n, k, c, spatial = args.series, args.configs, args.channels, (2, 8, 8)
    alone_k = min(args.alone or k, k)
    y = rng.integers(0, 2, (n, args.labels)).astype(np.float32)
    x = np.empty((n, k, c, *spatial), np.float16)
    for i in range(0, n, 100):  # in parts: float16 is 1.6 GB at 2,000 series, float64 would be 6 GB
        x[i : i + 100] = rng.standard_normal((min(100, n - i), k, c, *spatial), dtype=np.float32)
    strength = np.linspace(0, 0.5, k, dtype=np.float32)  # configurations differ in signal
    x[:, :, : args.labels] += (strength[None, :, None] * (2 * y[:, None, :] - 1))[..., None, None, None].astype(np.float16)
    train_rows = np.arange(n) < int(0.8 * n)
    x_train, x_val, y_train, y_val = x[train_rows], x[~train_rows], y[train_rows], y[~train_rows]
    params = dict(epochs=args.epochs, lr=5e-4, batch_size=args.batch, random_state=0)
    print(f"{n} series (80% train), {k} configurations, activation {c} x {'x'.join(map(str, spatial))} float16, "
          f"{args.epochs} epochs, batch {args.batch}, torch threads {torch.get_num_threads()}", flush=True)

    start = time.perf_counter()
    batched = BatchedSAPProbes(**params).fit(x_train, y_train).predict_proba(x_val)
    t_batched = time.perf_counter() - start
    print(f"batched: {t_batched:.1f} s", flush=True)

    start = time.perf_counter()
    alone = [PlaneProbe("sap", **params).fit(x_train[:, j], y_train).predict_proba(x_val[:, j]) for j in range(alone_k)]
    t_alone = (time.perf_counter() - start) * k / alone_k
    scaled = f" ({alone_k} of {k} trained, time x {k / alone_k:g})" if alone_k < k else ""

    auc_b = np.array([auroc_per_label(y_val, batched[:, j]).mean() for j in range(alone_k)])
    auc_a = np.array([auroc_per_label(y_val, alone[j]).mean() for j in range(alone_k)])
    print(f"batched {t_batched:.1f} s, one at a time {t_alone:.1f} s{scaled}: {t_alone / t_batched:.2f}x; "
          f"validation macro AUROC max |diff| {np.abs(auc_b - auc_a).max():.4f} (range {auc_a.min():.3f}-{auc_a.max():.3f})")


if __name__ == "__main__":
    main()
