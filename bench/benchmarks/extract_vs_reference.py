"""Bench: `orthodiff extract` vs the reference code's workflow, whole processes, side by side.

    .venv/bin/python bench/benchmarks/extract_vs_reference.py                          # tiny, 25 series x 8 timesteps x 3 blocks
    .venv/bin/python bench/benchmarks/extract_vs_reference.py --preset demo --series 4 --timesteps 1 --rounds 1   # a check

One store of `--series` random axial volumes and one `--preset` backbone (one pretraining
step: the same weights for every run). Each round runs, each as a fresh process timed
from start to exit, on its own copy of the store:
- the reference workflow (`reference` sub-command of this file): the plain fp32 network,
  encoder + middle block once per (series batch, timestep, block) as the reference code's
  `get_feature` does, one file of features per (timestep, block);
- `orthodiff extract` with its defaults (fp32: channels-last, one pass per (series,
  timestep), all three blocks kept), then `--precision bf16`, then (with `--compile`)
  `--compile` (fp32) and `--precision bf16 --compile`: whole processes, so their times include
  compiling (more series amortise it).
Both sides use the same series batch and noise schedule. Printed per variant: the minimum
wall time over rounds, the ratio to the reference, milliseconds per series-pass (series x
timesteps), and achieved GFLOP/s counted as one pass's FLOPs (`bench/benchmarks/flops.py`) per
series-pass: the work `extract` needs, not what the reference spends.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def reference(store: str, checkpoint: str, timesteps: list[int], batch: int, out: str) -> None:
    """The reference workflow in this process: one forward per (batch, timestep, block)."""
    import torch
    import zarr

    from orthodiff.backbone import MIDDLE_BLOCKS, load_backbone
    from orthodiff.backbone.diffusion import NoiseScheduler

    model, scheduler = load_backbone(checkpoint, "cpu"), NoiseScheduler()
    volumes = zarr.open_array(store, path="volumes/volume", mode="r")[:].astype(np.float32)
    generator = torch.Generator().manual_seed(0)
    for timestep in timesteps:
        for block in MIDDLE_BLOCKS:
            parts = []
            for i in range(0, len(volumes), batch):
                x0 = torch.from_numpy(volumes[i : i + batch])[:, None]
                t = torch.full((len(x0),), timestep)
                x_t = scheduler.add_noise(x0, torch.randn(x0.shape, generator=generator), t)
                with torch.no_grad():
                    parts.append(model.middle_features(x_t, t, (block,))[block].numpy())
            np.save(Path(out) / f"axial_{timestep}_{block}.npy", np.concatenate(parts))


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    ref = sub.add_parser("reference")
    for name in ("--store", "--checkpoint", "--out"):
        ref.add_argument(name, required=True)
    ref.add_argument("--timesteps", required=True)
    ref.add_argument("--batch", type=int, default=8)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--series", type=int, default=25)
    parser.add_argument("--timesteps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="series per forward, both sides")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time `--compile` in fp32 and bf16")
    args = parser.parse_args()
    if args.command == "reference":
        reference(args.store, args.checkpoint, [int(t) for t in args.timesteps.split(",")], args.batch, args.out)
        return

    import pandas as pd
    import torch

    sys.path.insert(0, str(HERE))
    from flops import middle_flops
    from orthodiff.backbone import PRESETS
    from orthodiff.backbone.pretrain import pretrain
    from orthodiff.featurestore.volumes import append_volumes, open_volumes

    size = PRESETS[args.preset].image_size
    timesteps = ",".join(str(int(t)) for t in np.linspace(10, 500, args.timesteps))
    passes = args.series * args.timesteps
    with tempfile.TemporaryDirectory() as tmp:
        base = str(Path(tmp) / "base.zarr")
        meta = pd.DataFrame({"series_id": [f"s{i}" for i in range(args.series)], "case_id": [f"c{i}" for i in range(args.series)],
                             "patient_id": [f"p{i}" for i in range(args.series)], "plane": "axial", "scan": 0, "split": "train"})
        append_volumes(base, np.random.default_rng(0).uniform(-1, 1, (args.series, 16, size, size)).astype(np.float32), meta)
        ckpt = str(pretrain(open_volumes(base), "axial", args.preset, steps=1, batch=1, out=Path(tmp) / "b.pt", every=1,
                            progress=False))
        extract = [sys.executable, "-m", "orthodiff", "extract", "--plane", "axial", "--backbone", ckpt,
                   "--timesteps", timesteps, "--series-batch", str(args.batch)]
        variants = {"reference workflow (fp32)": None, "orthodiff extract (defaults)": [],
                    "orthodiff extract --precision bf16": ["--precision", "bf16"]}
        if args.compile:
            variants["orthodiff extract --compile"] = ["--compile"]
            variants["orthodiff extract --precision bf16 --compile"] = ["--precision", "bf16", "--compile"]
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        print(f"{args.preset}, {args.series} series x {args.timesteps} timesteps x 3 blocks, batch {args.batch}, "
              f"{args.rounds} round(s), torch threads {torch.get_num_threads()}", flush=True)
        for r in range(args.rounds):
            for i, (name, options) in enumerate(variants.items()):
                store = str(Path(tmp) / f"r{r}v{i}.zarr")
                shutil.copytree(base, store)
                if options is None:
                    out = Path(tmp) / f"ref{r}"
                    out.mkdir()
                    command = [sys.executable, __file__, "reference", "--store", store, "--checkpoint", ckpt,
                               "--timesteps", timesteps, "--batch", str(args.batch), "--out", str(out)]
                else:
                    command = [*extract, "--store", store, *options]
                seconds[name].append(timed(command))
                print(f"  round {r + 1}: {name}: {seconds[name][-1]:.1f} s", flush=True)
                shutil.rmtree(store)
    flops = middle_flops(args.preset)
    base_s = min(seconds["reference workflow (fp32)"])
    print(f"{'variant':48s} {'wall s':>8s} {'vs reference':>13s} {'ms/series-pass':>15s} {'GFLOP/s':>8s}")
    for name, values in seconds.items():
        best = min(values)
        print(f"{name:48s} {best:8.1f} {base_s / best:12.2f}x {1e3 * best / passes:15.0f} {flops * passes / best / 1e9:8.1f}")


if __name__ == "__main__":
    main()
