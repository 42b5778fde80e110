"""Bench: peak memory of `extract` does not grow with the number of series.

    .venv/bin/python bench/benchmarks/extract_memory.py --series 1000,4000

For each size, a store of that many axial `tiny` volumes (64 px) is built, then `extract`
runs in a fresh process whose peak RSS is read from the kernel. The backbone forward is
replaced by a cheap stand-in of the same output shape (`--real` keeps the network, at
~0.1 s per series and timestep on 2 cores), so the run measures what grows with the
store: planning, completion records, volume reads and shard writes.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from memory import peak_rss_mib, rss_mib

PRESET = "tiny"
TIMESTEPS = (10, 50)


class CheapBackbone:
    """Stands in for a loaded backbone: middle features filled from the timestep."""

    def __init__(self, model):
        self.config, self.device = model.config, torch.device("cpu")

    def middle_features(self, x_t, t, blocks):
        shape = (len(x_t), *self.config.middle_shape)
        level = x_t.mean(dim=(1, 2, 3, 4)).view(-1, 1, 1, 1, 1)
        return {b: torch.zeros(shape) + level + t.view(-1, 1, 1, 1, 1) / 1000 for b in blocks}


def build(root: Path, n: int) -> tuple[str, str]:
    """A store of `n` axial volumes (written in batches) and an untrained `tiny` checkpoint."""
    from orthodiff.backbone import PRESETS
    from orthodiff.backbone.pretrain import pretrain
    from orthodiff.featurestore.volumes import append_volumes, open_volumes

    size = PRESETS[PRESET].image_size
    store = str(root / f"store{n}.zarr")
    ramp = np.linspace(-1, 1, size, dtype=np.float32)
    for start in range(0, n, 500):
        ids = range(start, min(start + 500, n))
        meta = pd.DataFrame({"series_id": [f"s{i:06d}" for i in ids], "case_id": [f"c{i}" for i in ids],
                             "patient_id": [f"p{i}" for i in ids], "plane": "axial", "scan": 0, "split": "train"})
        volumes = np.broadcast_to(ramp, (len(meta), 16, size, size)) * np.linspace(0.5, 1, len(meta))[:, None, None, None]
        append_volumes(store, volumes, meta)
    ckpt = root / "tiny.pt"
    if not ckpt.exists():
        pretrain(open_volumes(store), "axial", PRESET, steps=1, batch=1, out=ckpt, every=1, progress=False)
    return store, str(ckpt)


def child(store: str, ckpt: str, real: bool) -> None:
    """Runs in its own process: extract, then print baseline and peak RSS as JSON."""
    from orthodiff.backbone import load_backbone
    from orthodiff.featurestore import extract as module

    if not real:
        module._model = functools.lru_cache(maxsize=2)(lambda checkpoint, device: CheapBackbone(load_backbone(checkpoint, "cpu")))
    before = rss_mib()
    start = time.perf_counter()
    summary = module.extract(store, ckpt, "axial", TIMESTEPS, progress=False)
    peak = peak_rss_mib()
    print(json.dumps({"before": before, "peak": peak, "seconds": time.perf_counter() - start, **summary}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", default="1000,4000", help="comma-separated store sizes")
    parser.add_argument("--real", action="store_true", help="run the real tiny backbone (slow)")
    parser.add_argument("--child", nargs=2, metavar=("STORE", "CKPT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child, args.real)
    sizes = [int(s) for s in args.series.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            store, ckpt = build(Path(tmp), n)
            cmd = [sys.executable, __file__, "--child", store, ckpt] + (["--real"] if args.real else [])
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[n] = json.loads(out.strip().splitlines()[-1])
            r = results[n]
            print(f"{n:>6} series ({r['tasks']} tasks, {len(TIMESTEPS)} timesteps x 3 blocks, {PRESET}): "
                  f"{r['seconds']:.1f} s, RSS before extract {r['before']:.0f} MiB, peak {r['peak']:.0f} MiB, "
                  f"growth during extract {r['peak'] - r['before']:.0f} MiB")
    small, large = results[sizes[0]], results[sizes[-1]]
    print(f"peak RSS ratio {sizes[-1]} vs {sizes[0]} series: {large['peak'] / small['peak']:.2f} "
          f"(growth during extract: {(large['peak'] - large['before']) / max(small['peak'] - small['before'], 1):.2f})")


if __name__ == "__main__":
    main()
