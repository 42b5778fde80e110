"""Bench: a probe trained from stored features vs the same probe recomputing backbone
features every epoch (the reference workflow).

Both train the same ``ProbeNet`` with the same loop (``orthodiff.training.train``) on N random
volumes at one (timestep, block). The reference runs encoder + middle block of the
untrained backbone on every mini-batch of every epoch; the store path runs it once per
series, writes the activation to a Zarr array, and then streams that array each epoch.

    .venv/bin/python bench/benchmarks/heads_store_vs_backbone.py --preset tiny --series 64 --epochs 5
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import dask.array as da
import numpy as np
import torch

from orthodiff.backbone.diffusion import NoiseScheduler
from orthodiff.backbone.unet import PRESETS, DiffusionUNet
from orthodiff.heads.probe import ProbeNet
from orthodiff.training import apply, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--series", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--pooling", default="sap")
    parser.add_argument("--timestep", type=int, default=100)
    parser.add_argument("--block", default="mid_2")
    args = parser.parse_args()
    torch.set_num_threads(2)
    config = PRESETS[args.preset]
    backbone, scheduler = DiffusionUNet(config).eval(), NoiseScheduler()
    rng = np.random.default_rng(0)
    volumes = rng.uniform(-1, 1, (args.series, 1, config.depth, config.image_size, config.image_size)).astype(np.float32)
    y = (rng.random((args.series, 8)) < 0.3).astype(np.float32)
    channels = config.middle_channels
    common = dict(epochs=args.epochs, lr=5e-4, batch_size=8, random_state=0)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)], fused=True)  # one-off import, before timing

    @torch.no_grad()
    def features(x0: torch.Tensor) -> torch.Tensor:
        t = torch.full((len(x0),), args.timestep, dtype=torch.long)
        x_t = scheduler.add_noise(x0, torch.randn_like(x0), t)
        return backbone.middle_features(x_t, t, (args.block,))[args.block]

    net = ProbeNet(args.pooling, channels, y.shape[1])
    start = time.perf_counter()
    train(net, [volumes], y, None, forward=lambda x: net(features(x)), **common)
    t_reference = time.perf_counter() - start
    print(f"{args.series} series, preset {args.preset} ({config.image_size}x{config.image_size}x{config.depth}), "
          f"{args.pooling} probe, {args.epochs} epochs, middle block {args.block} {config.middle_shape}")
    print(f"reference (backbone every epoch): {t_reference:.1f} s ({t_reference / args.epochs:.2f} s/epoch)")

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        acts = apply(features, [volumes], block_rows=8).astype(np.float16)
        path = Path(tmp) / "slab.zarr"
        da.from_array(acts, chunks=(8, *acts.shape[1:])).to_zarr(str(path))
        t_extract = time.perf_counter() - start
        stored = da.from_zarr(str(path))
        net = ProbeNet(args.pooling, channels, y.shape[1])
        start = time.perf_counter()
        train(net, [stored], y, None, block_rows=32, **common)
        t_store = time.perf_counter() - start
    print(f"store: extraction once {t_extract:.1f} s, then training {t_store:.1f} s ({t_store / args.epochs:.2f} s/epoch)")
    print(f"training ratio reference / store: {t_reference / t_store:.1f}x; including the one-off extraction: "
          f"{t_reference / (t_store + t_extract):.1f}x")


if __name__ == "__main__":
    main()
