"""Bench: cross-joint transfer. Knee-pretrained backbones on synthetic ankle and shoulder cohorts,
against ResNet-18 trained from scratch on those joints.

    .venv/bin/orthodiff demo --out orthodiff-demo
    .venv/bin/python bench/experiments/transfer.py --demo orthodiff-demo --cases 120

Per joint: `orthodiff synth --joint J` (64 px, seed 0), ingest at the demo's 32 px, extract
every plane with the demo's knee backbones, then the heads tier (GAP sweep, selection,
concat fusion, LightGBM on the same vectors) and a ResNet-18 per plane from scratch, all
scored on the joint's own test split. Written under `DEMO/transfer/<joint>/`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from orthodiff.tables import frame_table, make_console


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("orthodiff-demo"))
    parser.add_argument("--joints", default="ankle,shoulder")
    parser.add_argument("--cases", type=int, default=120)
    parser.add_argument("--baseline-epochs", type=int, default=5)
    args = parser.parse_args()

    from orthodiff.catalogs.synth import synthesize
    from orthodiff.catalogs.tasks import PLANES
    from orthodiff.demo import INGEST_SIZE, TIMESTEPS
    from orthodiff.featurestore.extract import extract
    from orthodiff.featurestore.ingest import ingest
    from orthodiff.heads.pipeline import SMALL_COHORT_FUSION, SMALL_COHORT_PROBE, run_heads
    from orthodiff.supervised.runs import comparison, run_baseline_classify

    console = make_console()
    rows = []
    for joint in args.joints.split(","):
        root = args.demo / "transfer" / joint
        catalog = root / "cohort" / "catalog.parquet"
        store = str(root / "store.zarr")
        start = time.perf_counter()
        if not catalog.exists():
            synthesize(joint, args.cases, 64, 0, root / "cohort", progress=False)
        ingest(catalog, store, size=INGEST_SIZE, progress=False)
        for plane in PLANES:
            extract(store, args.demo / "backbones" / f"{plane}.pt", plane, TIMESTEPS, progress=False)
        if not (root / "heads" / "summary.csv").exists():  # a rerun keeps finished runs
            run_heads(store, catalog, root / "heads", console, probe_params=SMALL_COHORT_PROBE,
                      fusion_params=SMALL_COHORT_FUSION)
        if not (root / "resnet18" / "run.json").exists():
            run_baseline_classify(store, catalog, "resnet18", list(PLANES), root / "resnet18", epochs=args.baseline_epochs)
        table = comparison([root / "heads" / "concat", root / "heads" / "lightgbm", root / "resnet18"])
        table.insert(0, "joint", joint)
        table["model"] = ["knee backbone, concat", "knee backbone, LightGBM", f"ResNet-18 from scratch ({args.baseline_epochs} epochs)"]
        rows.append(table)
        console.print(f"{joint}: {time.perf_counter() - start:.0f} s")
    console.print(frame_table(pd.concat(rows).drop(columns="run"), "Cross-joint transfer (test split, per joint)"))


if __name__ == "__main__":
    main()
