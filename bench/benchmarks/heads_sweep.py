"""Bench: GAP sweep over 8 timesteps x 3 blocks x 3 planes, batched vs one probe at a time.

Synthetic GAP summaries (256 channels, 8 labels) are written to a Zarr store and read back
lazily, as a sweep reads the feature store's ``gap`` variables.

    .venv/bin/python bench/benchmarks/heads_sweep.py --series 2000 --sequential   # ratio + equal AUROC
    .venv/bin/python bench/benchmarks/heads_sweep.py --series 10000               # batched sweep time
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from orthodiff.catalogs.tasks import get_task
from orthodiff.heads.sweep import sweep
from orthodiff.heads.synthetic import synthetic_catalog, synthetic_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=2000, help="total series over the three planes")
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--sequential", action="store_true", help="also train every configuration alone")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    labels = get_task("knee").label_columns
    catalog = synthetic_catalog(round(args.series / 3.15), labels, seed=0)
    params = {"epochs": args.epochs, "lr": 5e-4, "batch_size": 32}
    with tempfile.TemporaryDirectory() as tmp:
        for plane, ds in synthetic_features(catalog, labels, channels=args.channels, activation=False).items():
            # chunks as the store's summaries: a block of series x every configuration
            ds.chunk({"series": 512, "timestep": -1, "block": -1, "channel": -1}).to_zarr(
                Path(tmp) / f"{plane}.zarr", mode="w", consolidated=False
            )
        features = {p: xr.open_zarr(Path(tmp) / f"{p}.zarr", consolidated=False) for p in ("sagittal", "coronal", "axial")}
        n_configs = sum(ds.sizes["timestep"] * ds.sizes["block"] for ds in features.values())
        print(f"{len(catalog)} series ({catalog.split.value_counts().to_dict()}), {n_configs} configurations, "
              f"{args.channels} channels, {len(labels)} labels, {args.epochs} epochs, torch threads {torch.get_num_threads()}")
        # one-off costs per process (torch._dynamo import on the first Adam, Dask's thread
        # pool, first-call kernel setup: ~0.8 s) are paid on a one-epoch warm-up of both
        # variants, so neither timed variant is charged for them
        warm = {**params, "epochs": 1}
        for batched in (True, False):
            sweep(features, catalog, labels, "gap", batched=batched, probe_params=warm)
        start = time.perf_counter()
        batched = sweep(features, catalog, labels, "gap", batched=True, probe_params=params)
        t_batched = time.perf_counter() - start
        print(f"batched sweep: {t_batched:.2f} s")
        if args.sequential:
            start = time.perf_counter()
            alone = sweep(features, catalog, labels, "gap", batched=False, probe_params=params)
            t_alone = time.perf_counter() - start
            merged = batched.merge(alone, on=["plane", "timestep", "block", "label"])
            diff = np.nanmax(np.abs(merged.auroc_x - merged.auroc_y))
            macro = merged[merged.label == "macro"]
            print(f"sequential sweep: {t_alone:.2f} s; ratio sequential/batched = {t_alone / t_batched:.1f}x")
            print(f"max |val AUROC batched - sequential| over {len(merged)} (config, label) pairs: {diff:.2e}; "
                  f"best macro AUROC batched {macro.auroc_x.max():.4f} vs sequential {macro.auroc_y.max():.4f}")
            training_only(features["sagittal"], catalog, labels, params)


def training_only(ds, catalog, labels, params) -> None:
    """The training part alone (no store reads, no scoring): one plane's training GAP
    vectors in memory, one batched fit vs one PlaneProbe fit per configuration."""
    from orthodiff.heads.probe import PlaneProbe
    from orthodiff.heads.sweep import BatchedGAPProbes

    rows = catalog[(catalog.plane == "sagittal") & (catalog.split == "train")]
    gap = ds["gap"].sel(series=rows["series_id"].to_numpy()).transpose("series", "timestep", "block", "channel")
    X = gap.to_numpy().reshape(len(rows), -1, gap.sizes["channel"])
    y = rows[labels].to_numpy()
    start = time.perf_counter()
    BatchedGAPProbes(**params).fit(X, y)
    t_batched = time.perf_counter() - start
    start = time.perf_counter()
    for k in range(X.shape[1]):
        PlaneProbe("gap", **params).fit(X[:, k], y)
    t_alone = time.perf_counter() - start
    print(f"training only (sagittal, {len(rows)} series x {X.shape[1]} configurations): batched {t_batched:.2f} s, "
          f"one by one {t_alone:.2f} s; ratio {t_alone / t_batched:.1f}x")


if __name__ == "__main__":
    main()
