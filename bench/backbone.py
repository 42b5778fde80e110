"""Bench: one-pass multi-block extraction vs the reference style, forward time, pretraining speed.

    .venv/bin/python bench/backbone.py --preset tiny --timesteps 8      # ratio, equal outputs
    .venv/bin/python bench/backbone.py --preset paper --timesteps 2     # batch 1 on CPU (slow)
    .venv/bin/python bench/backbone.py --preset small --train-steps 3   # pretraining steps/s

The reference style calls the full network once per block per timestep and keeps one
middle-block output each time (a forward hook); orthodiff runs encoder + middle block once
per timestep and keeps all three.
"""

from __future__ import annotations

import argparse
import time

import torch

from memory import peak_rss_mib
from orthodiff.backbone import MIDDLE_BLOCKS, PRESETS, DiffusionUNet
from orthodiff.backbone.diffusion import GaussianDiffusion


def reference_style(model: DiffusionUNet, x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {}
    for i, block in enumerate(MIDDLE_BLOCKS):
        hook = model.middle_block[i].register_forward_hook(lambda m, a, o, b=block: out.__setitem__(b, o))
        model(x, t)
        hook.remove()
    return out

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=list(PRESETS))
    parser.add_argument("--timesteps", type=int, default=8, help="timesteps per series")
    parser.add_argument("--train-steps", type=int, default=0, help="also time this many pretraining steps (batch 4)")
    args = parser.parse_args()

    config = PRESETS[args.preset]
    model = DiffusionUNet(config).eval()
    x = torch.randn(1, 1, config.depth, config.image_size, config.image_size)
    times = torch.linspace(10, 500, args.timesteps).long()
    with torch.no_grad():
        model.middle_features(x, times[:1])  # warm up
        start = time.perf_counter()
        ours = [model.middle_features(x, t[None]) for t in times]
        one_pass = time.perf_counter() - start
        start = time.perf_counter()
        theirs = [reference_style(model, x, t[None]) for t in times]
        per_block = time.perf_counter() - start
        start = time.perf_counter()
        model(x, times[:1])
        forward = time.perf_counter() - start
    equal = all(torch.equal(a[b], r[b]) for a, r in zip(ours, theirs) for b in MIDDLE_BLOCKS)
    print(f"preset {args.preset} ({config.depth}x{config.image_size}x{config.image_size}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters), threads {torch.get_num_threads()}")
    print(f"extraction, 3 blocks x {args.timesteps} timesteps, batch 1: one pass {one_pass:.2f} s, "
          f"reference style {per_block:.2f} s, ratio {per_block / one_pass:.2f}x, outputs equal: {equal}")
    print(f"full forward per series per timestep: {forward:.3f} s; "
          f"middle_features per series per timestep: {one_pass / args.timesteps:.3f} s")
    if args.train_steps:
        diffusion, opt = GaussianDiffusion(), torch.optim.Adam(model.train().parameters(), 1e-4)
        batch = torch.randn(4, 1, config.depth, config.image_size, config.image_size)
        start = time.perf_counter()
        for _ in range(args.train_steps):
            loss = diffusion.loss(model, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"pretraining, batch 4: {args.train_steps / (time.perf_counter() - start):.3f} steps/s")
    print(f"peak resident memory: {peak_rss_mib() / 1024:.2f} GiB")

if __name__ == "__main__":
    main()
