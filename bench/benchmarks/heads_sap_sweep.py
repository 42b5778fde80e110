"""Bench: SAP sweep of one plane (8 timesteps x 3 blocks), batched vs one probe at a time.

    .venv/bin/python bench/benchmarks/heads_sap_sweep.py --series 2000                    # the issue's size
    .venv/bin/python bench/benchmarks/heads_sap_sweep.py --series 2000 --epochs 1 --alone 2  # a loaded 2-core machine

Synthetic float16 activations of the `tiny` middle shape (128 channels x 2 x 8 x 8) with a
label signal in some configurations, held in memory (so the ratio is compute, not reads:
the one-by-one sweep on a store also reads every activation once per configuration).
One at a time = ``PlaneProbe("sap")`` fitted per configuration (what ``sweep(...,
batched=False)`` does); batched = ``BatchedSAPProbes``; both at the paper's probe settings
unless given. ``--alone M`` trains only the first M configurations one at a time and scales
their time by K / M (every configuration has the same shapes, so the same cost); validation
macro AUROC is compared on those M. Then one training step of each (batched; the single
probe once per configuration), interleaved `--step-repeats` times (min), which a changing
load charges alike.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from orthodiff.heads.batched_sap import BatchedSAPProbes
from orthodiff.heads.metrics import auroc_per_label
from orthodiff.heads.batched_sap import BatchedSAPNet
from orthodiff.heads.probe import PlaneProbe, ProbeNet
from orthodiff.training import seeded, weighted_bce


def step_seconds(x: np.ndarray, y: np.ndarray, repeats: int) -> tuple[float, float]:
    """Min seconds of one training step (forward, loss, backward) of the K batched probes
    and of the single probe run once per configuration, interleaved."""
    k, c = x.shape[1], x.shape[2]
    nets = [seeded(0, lambda: ProbeNet("sap", c, y.shape[1])) for _ in range(k)]
    batched, single = BatchedSAPNet(nets), nets[0]
    xb, yb, w = torch.from_numpy(x), torch.from_numpy(y), torch.ones(len(y))
    parts = [torch.from_numpy(np.ascontiguousarray(x[:, j])) for j in range(k)]

    def step(net, inputs) -> None:
        net.zero_grad()
        weighted_bce(net(inputs), yb, w).backward()

    times = {"batched": [], "alone": []}
    for _ in range(repeats):
        start = time.perf_counter()
        step(batched, xb)
        times["batched"].append(time.perf_counter() - start)
        start = time.perf_counter()
        for part in parts:
            step(single, part)
        times["alone"].append(time.perf_counter() - start)
    return min(times["batched"]), min(times["alone"])


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
    parser.add_argument("--step-repeats", type=int, default=4)
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

    warm = dict(params, epochs=1)  # one-time library start-up (seconds) stays out of both timings
    BatchedSAPProbes(**warm).fit(x_train[:8, :2], y_train[:8]).predict_proba(x_val[:8, :2])
    PlaneProbe("sap", **warm).fit(x_train[:8, 0], y_train[:8]).predict_proba(x_val[:8, 0])

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

    t_b, t_a = step_seconds(x_train[: args.batch], y_train[: args.batch], args.step_repeats)
    print(f"one training step of {args.batch} series, interleaved x {args.step_repeats} (min): batched {t_b:.2f} s, "
          f"one at a time (x {k}) {t_a:.2f} s: {t_a / t_b:.2f}x")


if __name__ == "__main__":
    main()
