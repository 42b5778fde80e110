"""Bench: where `extract`'s wall time goes: the network's share, and extract vs a plain loop.

    .venv/bin/python bench/benchmarks/extract_share.py --series 32 --timesteps 2
    .venv/bin/python bench/benchmarks/extract_share.py --series 32 --timesteps 2 --precision bf16

A store of `--series` axial volumes at the `tiny` size and an untrained `tiny` backbone;
`extract` (fresh process state, one in-process run) against a plain loop over the same
forwards (`forward_timestep`, no store), with CPU user/system time of each.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from orthodiff.backbone import PRESETS, load_backbone
from orthodiff.backbone.pretrain import pretrain
from orthodiff.featurestore.extract import extract, forward_timestep
from orthodiff.featurestore.volumes import append_volumes, open_volumes


def cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=32)
    parser.add_argument("--timesteps", type=int, default=2)
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    size = PRESETS["tiny"].image_size
    timesteps = tuple(int(t) for t in np.linspace(10, 500, args.timesteps))
    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp) / "s.zarr")
        meta = pd.DataFrame({"series_id": [f"s{i}" for i in range(args.series)], "case_id": [f"c{i}" for i in range(args.series)],
                             "patient_id": [f"p{i}" for i in range(args.series)], "plane": "axial", "scan": 0, "split": "train"})
        volumes = np.random.default_rng(0).uniform(-1, 1, (args.series, 16, size, size)).astype(np.float32)
        append_volumes(store, volumes, meta)
        ckpt = str(pretrain(open_volumes(store), "axial", "tiny", steps=1, batch=1, out=Path(tmp) / "tiny.pt", every=1, progress=False))
        model = load_backbone(ckpt, "cpu")
        forward_timestep(model, volumes[:8], tuple(meta.series_id[:8]), 10, ("mid_0",), 0, 8, args.precision)  # warm-up

        before, start = cpu(), time.perf_counter()
        summary = extract(store, ckpt, "axial", timesteps, precision=args.precision, progress=False)
        t_extract, after = time.perf_counter() - start, cpu()
        u_e, s_e = after[0] - before[0], after[1] - before[1]

        before, start = cpu(), time.perf_counter()
        ids = tuple(meta.series_id)
        for i in range(0, args.series, 16):
            for t in timesteps:
                forward_timestep(model, volumes[i : i + 16], ids[i : i + 16], t, ("mid_0", "mid_1", "mid_2"), 0, 8,
                                 args.precision)
        t_loop, after = time.perf_counter() - start, cpu()
        u_l, s_l = after[0] - before[0], after[1] - before[1]
    passes = args.series * args.timesteps
    print(f"tiny, {args.series} series x {args.timesteps} timesteps, {args.precision}: extract {t_extract:.1f} s "
          f"({t_extract / passes * 1000:.0f} ms per series-pass; network {summary['network_share']:.0%} of wall; "
          f"CPU user {u_e:.1f} s, system {s_e:.1f} s); plain loop {t_loop:.1f} s ({t_loop / passes * 1000:.0f} ms; "
          f"user {u_l:.1f} s, system {s_l:.1f} s); extract / loop {t_extract / t_loop:.2f}")


if __name__ == "__main__":
    main()
