"""`orthodiff demo`: the pipeline end to end on the embedded synthetic knee cohort.

Every stage writes under one folder and is skipped when its output is already complete,
so rerunning an interrupted demo finishes only what is missing.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.console import Console

from orthodiff.tables import frame_table

JOINT, CASES, SIZE, SEED = "knee", 120, 64, 0


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def volumes_table(store: Path) -> pd.DataFrame:
    """Series in the store's volumes, per plane and split."""
    from orthodiff.featurestore.volumes import open_volumes

    ds = open_volumes(str(store))
    coords = pd.DataFrame({"plane": ds.plane.values, "split": ds.split.values})
    table = coords.groupby(["plane", "split"]).size().unstack("split", fill_value=0).reset_index()
    table["masks"] = pd.Series(ds.has_mask.values).groupby(coords["plane"].values).sum().reindex(table["plane"]).values
    return table


def run_demo(out: Path, console: Console) -> None:
    from orthodiff.catalogs.cohort import cohort_summary, read_catalog, validate_catalog
    from orthodiff.catalogs.synth import preview, synthesize
    from orthodiff.featurestore.ingest import ingest

    out = Path(out)
    cohort, store = out / "cohort", out / "store.zarr"
    catalog = cohort / "catalog.parquet"

    console.rule(f"1. synthetic {JOINT} cohort: {CASES} exams, {SIZE}x{SIZE}, seed {SEED}")
    if catalog.exists():
        console.print(f"reusing {catalog}")
    else:
        synthesize(JOINT, CASES, SIZE, SEED, cohort)
        preview(catalog, out / "cohort_preview.png")
    df = read_catalog(catalog)
    validate_catalog(df, catalog)
    console.print(
        f"[green]valid[/] {catalog}: {len(df)} series, {df['case_id'].nunique()} exams, "
        f"{df['patient_id'].nunique()} patients; preview {out / 'cohort_preview.png'}"
    )
    summary = cohort_summary(df)
    console.print(frame_table(summary["labels"], "Label prevalence (per exam)"))
    console.print(frame_table(summary["sites"], "Exams per center and field strength"))
    console.print(frame_table(summary["planes"], "Series per plane and scan"))

    console.rule(f"2. ingest into {store}")
    result = ingest(catalog, str(store), size=SIZE)
    counts = result.groupby("status").size().to_dict()
    console.print(f"series {counts}; {_disk_bytes(store) / 2**20:.1f} MiB on disk")
    console.print(frame_table(volumes_table(store), f"{store}: volumes (16 x {SIZE} x {SIZE}, float16)"))
