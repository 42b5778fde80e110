"""Bench: SAP sweep of one plane (8 timesteps x 3 blocks), batched vs one probe at a time.

    .venv/bin/python bench/heads_sap_sweep.py --series 2000          # the issue's size
    .venv/bin/python bench/heads_sap_sweep.py --series 200 --epochs 2  # a loaded 2-core machine

Synthetic float16 activations of the `tiny` middle shape (128 channels x 2 x 8 x 8) with a
label signal in some configurations, held in memory (so the ratio is compute, not reads).
One at a time = the paper's SAP probe (`heads.pooling.SAP` on the raw activation, [GAP,
SAP] -> linear, the single probe's initialisation) trained alone per configuration with
the same loop; batched = `BatchedSAPProbes`. Validation AUROC is compared per configuration.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.special import expit

from orthodiff.heads.batched_sap import BatchedSAPProbes
from orthodiff.heads.metrics import auroc_per_label
from orthodiff.heads.probe import ProbeNet
from orthodiff.training import apply, seeded, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=2000)
    parser.add_argument("--configs", type=int, default=24, help="timesteps x blocks")
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--labels", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n, k, c, spatial = args.series, args.configs, args.channels, (2, 8, 8)
    y = rng.integers(0, 2, (n, args.labels)).astype(np.float32)
    x = rng.normal(size=(n, k, c, *spatial)).astype(np.float16)
    strength = np.linspace(0, 0.5, k, dtype=np.float32)  # configurations differ in signal
    x[:, :, : args.labels] += (strength[None, :, None] * (2 * y[:, None, :] - 1))[..., None, None, None].astype(np.float16)
    train_rows = np.arange(n) < int(0.8 * n)
    params = dict(epochs=args.epochs, lr=5e-4, batch_size=32, random_state=0)
    print(f"{n} series (80% train), {k} configurations, activation {c} x {'x'.join(map(str, spatial))} float16, "
          f"{args.epochs} epochs, torch threads {torch.get_num_threads()}")

    start = time.perf_counter()
    probes = BatchedSAPProbes(**params).fit(x[train_rows], y[train_rows])
    batched = probes.predict_proba(x[~train_rows])
    t_batched = time.perf_counter() - start

    start = time.perf_counter()
    alone = []
    for j in range(k):
        net = seeded(0, lambda: ProbeNet("sap", c, args.labels))
        single = torch.nn.Sequential(net.pool, net.classifier)
        train(single, [x[train_rows, j]], y[train_rows], None, epochs=args.epochs, lr=5e-4, batch_size=32, random_state=0)
        alone.append(expit(apply(single, [x[~train_rows, j]])))
    t_alone = time.perf_counter() - start

    y_val = y[~train_rows]
    auc_b = np.array([auroc_per_label(y_val, batched[:, j]).mean() for j in range(k)])
    auc_a = np.array([auroc_per_label(y_val, alone[j]).mean() for j in range(k)])
    print(f"batched {t_batched:.1f} s, one at a time {t_alone:.1f} s: {t_alone / t_batched:.2f}x; validation macro AUROC "
          f"max |diff| {np.abs(auc_b - auc_a).max():.4f} (range {auc_a.min():.3f}-{auc_a.max():.3f})")


if __name__ == "__main__":
    main()
