"""Bench: how high can persona SSIM go on the synthetic cohort? The noise ceiling.

    .venv/bin/python bench/experiments/personas_ceiling.py --run runs/personas_healthy

A persona cannot know the noise of the exam it completes: at best it is the noise-free
anatomy. This renders the healthy test series that `personas_healthy.py` scored once more
with the scanner noise switched off (the same synth seed, exams and protocols; only the
Rician noise is 0), ingests them like the originals, matches each clean volume's intensities
to its noisy one outside the box (least squares a * clean + b, which a persona could learn
from the context), and scores it inside the box exactly as `persona-fidelity` scores
personas (`personas.fidelity.roi_ssim_mse`). Printed beside the run's persona and fill
scores (its `fidelity_*/fidelity_per_series.csv`): the SSIM a perfect persona would reach.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd


def clean_cohort(run: Path, out: Path) -> Path:
    """The run's cohort rendered without noise (synth's `NOISE` set to 0 for this call)."""
    from orthodiff.catalogs import synth

    catalog = out / "catalog.parquet"
    if catalog.exists():
        return catalog
    command = json.loads((run / "commands.json").read_text())["synth"].split()
    value = {name: command[command.index(name) + 1] for name in ("--cases", "--size", "--seed", "--healthy-share")}
    noise = dict(synth.NOISE)
    synth.NOISE.update(dict.fromkeys(noise, 0.0))
    try:
        return synth.synthesize("knee", int(value["--cases"]), int(value["--size"]), int(value["--seed"]), out,
                                progress=False, healthy_share=float(value["--healthy-share"]))
    finally:
        synth.NOISE.update(noise)


def ceiling(noisy: np.ndarray, clean: np.ndarray, roi: np.ndarray) -> tuple[float, float]:
    """(SSIM, MSE) in the ROI of `clean` matched to `noisy` by least squares outside it."""
    from orthodiff.personas.fidelity import roi_ssim_mse

    outside = ~roi
    a, b = np.polyfit(clean[outside].astype(np.float64), noisy[outside].astype(np.float64), 1)
    return roi_ssim_mse(noisy, a * clean + b, roi)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a personas_healthy.py output folder")
    args = parser.parse_args()
    from orthodiff.catalogs.cohort import label_columns, read_catalog, write_catalog
    from orthodiff.featurestore.ingest import ingest
    from orthodiff.featurestore.volumes import open_volumes
    from orthodiff.personas.fidelity import mean_ci
    from orthodiff.personas.rois import box_grid

    run = args.run.resolve()
    scored = read_catalog(run / "cohort" / "scored.parquet")
    healthy = scored[(scored[label_columns(scored)] == 0).all(axis=1)].series_id.tolist()
    clean_dir = run / "clean_cohort"
    catalog = read_catalog(clean_cohort(run, clean_dir))
    subset = clean_dir / "healthy_scored.parquet"
    if not subset.exists():
        write_catalog(catalog[catalog.series_id.isin(healthy)], subset)
    store = run / "clean.zarr"
    if not store.exists():
        size = json.loads((run / "commands.json").read_text())["ingest"].split("--size")[1].split()[0]
        ingest(subset, str(store), size=int(size), progress=False)
    noisy = open_volumes(str(run / "test.zarr")).volume
    clean = open_volumes(str(store)).volume
    rows = []
    for series in healthy:
        x, c = noisy.sel(series=series).values, clean.sel(series=series).values
        roi = box_grid(x.shape, 1)[0] > 0
        ssim, mse = ceiling(x, c, roi)
        rows.append({"series": series, "ssim": ssim, "mse_255": mse * (255 / 2) ** 2})
    table = pd.DataFrame(rows)
    table.to_csv(run / "ceiling_per_series.csv", index=False)
    print("inside the box of the healthy test series: SSIM mean (95% CI)")
    low_high = mean_ci(table.ssim)
    print(f"  noise-free anatomy (a perfect persona): {low_high[0]:.3f} ({low_high[1]:.3f}-{low_high[2]:.3f}), "
          f"n = {len(table)}")
    for folder in sorted(run.glob("fidelity_*")):
        per_series = pd.read_csv(folder / "fidelity_per_series.csv")
        for column in [c for c in per_series if c.endswith("ssim")]:
            m = mean_ci(per_series[column].dropna())
            print(f"  {folder.name} {column}: {m[0]:.3f} ({m[1]:.3f}-{m[2]:.3f})")


if __name__ == "__main__":
    main()
