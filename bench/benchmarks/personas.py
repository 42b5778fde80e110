"""Persona generation time: seconds per series (and per ROI) at the demo and tiny presets, and
its scaling with sampling steps. Untrained backbones (the cost does not depend on the weights).

    .venv/bin/python bench/benchmarks/personas.py [--steps 2,4,8] [--jumps 1] [--series 2] [--series-batch 1]
    .venv/bin/python bench/benchmarks/personas.py --presets demo --steps 1 --series 8 --series-batch 1,8

Calls `repaint` directly on the central box of random volumes (the 3x3x3 grid's union is that box,
inpainted in one pass, so the per-ROI cost is the per-series cost / 27).
"""

from __future__ import annotations

import argparse
import time

import torch

from orthodiff.backbone import PRESETS, DiffusionUNet
from orthodiff.backbone.diffusion import NoiseScheduler
from orthodiff.personas.inpaint import repaint, series_generator
from orthodiff.personas.rois import box_grid


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", default="2,4,8")
    parser.add_argument("--jumps", type=int, default=1)
    parser.add_argument("--series", type=int, default=2)
    parser.add_argument("--series-batch", default="1", help="series per forward pass, comma-separated to compare")
    parser.add_argument("--presets", default="demo,tiny")
    args = parser.parse_args()
    scheduler = NoiseScheduler()
    print(f"torch threads {torch.get_num_threads()}, jumps {args.jumps}")
    print("preset  batch  steps  s/series  s/ROI(27)  s/forward")
    for preset, batch in [(p, int(b)) for p in args.presets.split(",") for b in args.series_batch.split(",")]:
        torch.manual_seed(0)
        config = PRESETS[preset]
        model = DiffusionUNet(config).eval()
        size = config.image_size
        known = torch.from_numpy(box_grid((16, size, size), 3)[0] == 0)
        for steps in [int(s) for s in args.steps.split(",")]:
            start = time.perf_counter()
            for i in range(0, args.series, batch):
                ids = [f"s{j}" for j in range(i, min(i + batch, args.series))]
                x0 = torch.rand(len(ids), 1, 16, size, size) * 2 - 1
                repaint(model, scheduler, x0, known, steps, args.jumps, [series_generator(0, s) for s in ids])
            per = (time.perf_counter() - start) / args.series
            print(f"{preset:6s}  {batch:5d}  {steps:5d}  {per:8.2f}  {per / 27:9.3f}  {per * batch / (steps * args.jumps):9.3f}",
                  flush=True)


if __name__ == "__main__":
    main()
