"""Bench: healthy personas and radiomic fingerprints on the default synthetic cohort (the
folder `orthodiff demo` leaves), one plane, the box grids 1x1x1, 2x2x2 and 3x3x3.

    .venv/bin/orthodiff demo --out orthodiff-demo
    .venv/bin/python bench/experiments/fingerprint_cohort.py --demo orthodiff-demo

Steps (each resumable; a rerun reuses what is complete):
1. `pretrain --healthy` of the plane (demo preset) on the training series of exams whose
   labels are all 0 -> `DEMO/fingerprint/healthy_<plane>.pt`;
2. `persona` of every series of the plane on the central box (one inpainting serves every
   grid: the cells of all grids split the same box);
3. persona fidelity: SSIM / MSE inside the box on healthy exams per split (the paper: 0.92),
   beside a trivial persona (the box filled with the mean of the known voxels); the
   localisation score (residual energy share in the lesion's structure over random
   translations of it; 1 = none) on positive exams of the test split;
4. `radiomics` (all families, image / persona / residual) for each grid;
5. `fingerprint` for each task (abnormal, ACL, meniscus) and grid: the fingerprint head and
   its comparators fitted on train, thresholded on val, scored on test with 95% CIs
   resampling patients.

Writes `DEMO/fingerprint/{fidelity.csv, localisation.csv, table.csv, table.md}` and one
`orthodiff fingerprint` run directory per (grid, task) under `DEMO/fingerprint/runs/`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

# The paper's test AUC on MRNet (abnormal / ACL / meniscus) for the configuration closest to
# each of ours: T5 = Table 5 (image + persona, first-order + shape features), T7 = Table 7
# (1x1x1; NoPersona = image only and NoFS = u = 1, at 2x2x2), T8 = Table 8 (all feature
# families, as ours, at 2x2x2). Its usage predictor is a ResNet-18 on the images.
PAPER = {
    ("fingerprint (image+persona)", 1): "0.78 / 0.76 / 0.64 (T7)",
    ("fingerprint (image+persona)", 2): "0.85 / 0.80 / 0.84 (T5); all families 0.76 / 0.84 / 0.87 (T8)",
    ("fingerprint (image+persona)", 3): "0.75 / 0.87 / 0.88 (T5)",
    ("fingerprint (image)", 2): "0.81 / 0.68 / 0.74 (T7); all families 0.85 / 0.92 / 0.82 (T8)",
    ("u = 1 (no selection)", 2): "0.68 / 0.72 / 0.72 (T7)",
}
TASKS = ("abnormal", "acl", "meniscus")


def fidelity(store: str, catalog: pd.DataFrame, plane: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(SSIM / MSE of personas and of the mean-filled box on healthy exams per split, localisation scores)."""
    from orthodiff.errors import OrthodiffError
    from orthodiff.personas.fidelity import localisation, reproduction, roi_ssim_mse
    from orthodiff.personas.reader import open_personas

    ds = open_personas(store, plane)
    split_of = catalog.set_index("series_id")["split"]
    rows = []
    for split in ("train", "val", "test"):
        try:
            rep = reproduction(ds, catalog, split)
        except OrthodiffError:  # no healthy exam in this split
            continue
        part = ds.sel(series=rep.series.tolist()).load()
        trivial = []
        for i in range(len(rep)):
            image, roi = part.image.values[i].astype(np.float64), part["mask"].values[i] > 0
            filled = np.where(roi, image[~roi].mean(), image)
            trivial.append(roi_ssim_mse(image, filled, roi))
        rows.append({"split": split, "healthy series": len(rep), "persona SSIM": rep.ssim.mean(),
                     "persona MSE (0-255)": rep.mse_255.mean(),
                     "mean-filled box SSIM": float(np.mean([t[0] for t in trivial])),
                     "mean-filled box MSE (0-255)": float(np.mean([t[1] for t in trivial])) * (255 / 2) ** 2})
    loc = localisation(ds, catalog, "test")
    loc["split"] = loc.series.map(split_of)
    return pd.DataFrame(rows), loc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("orthodiff-demo"))
    parser.add_argument("--plane", default="sagittal")
    parser.add_argument("--pretrain-steps", type=int, default=40)
    parser.add_argument("--pretrain-lr", type=float, default=2e-4)
    parser.add_argument("--persona-steps", type=int, default=4)
    parser.add_argument("--jumps", type=int, default=1)
    parser.add_argument("--grids", default="1,2,3")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--bootstrap", type=int, default=500)
    args = parser.parse_args()

    from orthodiff.backbone.pretrain import pretrain
    from orthodiff.catalogs.cohort import read_catalog
    from orthodiff.featurestore.volumes import open_volumes
    from orthodiff.heads.fingerprint_cohort import run_fingerprint
    from orthodiff.personas.store import make_personas
    from orthodiff.radiomics.store import extract_radiomics
    from orthodiff.tables import frame_table, make_console

    console = make_console()
    store, catalog_path = str(args.demo / "store.zarr"), args.demo / "cohort" / "catalog.parquet"
    out = args.demo / "fingerprint"
    out.mkdir(parents=True, exist_ok=True)
    catalog = read_catalog(catalog_path)
    timings = json.loads((out / "timings.json").read_text()) if (out / "timings.json").exists() else {}

    def timed(name, function, *a, **k):
        start = time.perf_counter()
        result = function(*a, **k)
        timings[name] = timings.get(name, 0.0) + round(time.perf_counter() - start, 1)
        (out / "timings.json").write_text(json.dumps(timings, indent=1))
        return result

    healthy = out / f"healthy_{args.plane}.pt"
    if not healthy.exists():
        console.rule(f"1. pretrain --healthy {args.plane}: {args.pretrain_steps} steps of 4")
        timed("pretrain", pretrain, open_volumes(store), args.plane, "demo", args.pretrain_steps, 4, healthy, every=10,
              lr=args.pretrain_lr, seed=0, healthy_catalog=catalog_path)
    console.rule(f"2. personas of every {args.plane} series: central box, {args.persona_steps} steps x {args.jumps} jumps")
    made = timed("persona", make_personas, store, healthy, args.plane, "box", 3, args.persona_steps, args.jumps)
    console.print(made)

    console.rule("3. persona fidelity")
    reproduction, loc = fidelity(store, catalog, args.plane)
    reproduction.to_csv(out / "fidelity.csv", index=False)
    loc.to_csv(out / "localisation.csv", index=False)
    console.print(frame_table(reproduction.round(3), f"{args.plane} personas of healthy exams (inside the box)"))
    if len(loc):
        summary = loc.groupby("label").score.agg(["count", "mean", "median", lambda s: (s > 1).mean()]).reset_index()
        summary.columns = ["label", "exams", "mean score", "median score", "share > 1"]
        console.print(frame_table(summary.round(2), "localisation on positive test exams (1 = no localisation)"))

    rows = []
    for grid in [int(g) for g in args.grids.split(",")]:
        console.rule(f"4. radiomics, {grid}x{grid}x{grid} grid")
        summary = timed(f"radiomics grid {grid}", extract_radiomics, store, args.plane, grid=grid)
        for task in args.tasks.split(","):
            console.rule(f"5. fingerprint, {task}, {grid}x{grid}x{grid}")
            table = timed(f"fingerprint grid {grid} {task}", run_fingerprint, store, catalog_path, task,
                          out / "runs" / f"grid{grid}_{task}", settings=summary["settings"], epochs=args.epochs,
                          n_boot=args.bootstrap)
            rows.append(table.assign(grid=grid, task=task))
    table = pd.concat(rows)
    table.to_csv(out / "table.csv", index=False)
    (out / "table.md").write_text(markdown(table, args.tasks.split(","), test_counts(catalog, args.tasks.split(","))))
    console.print((out / "table.md").read_text())
    console.print(f"timings (s, loaded machine): {timings}")


def test_counts(catalog: pd.DataFrame, tasks) -> dict[str, tuple[int, int]]:
    """task -> (positive, negative) exams of the test split."""
    from orthodiff.heads.fingerprint_cohort import target

    test = catalog.groupby("case_id")["split"].first() == "test"
    return {task: (int(target(catalog, task)[test].sum()), int((1 - target(catalog, task))[test].sum())) for task in tasks}


def markdown(table: pd.DataFrame, tasks, counts: dict[str, tuple[int, int]]) -> str:
    """One row per (grid, model): test AUC (95% CI) per task, and the paper's AUC where it has one.

    `counts`: task -> (positive, negative) test exams; a task with fewer than MIN_SUPPORT of
    either is flagged in its header (its AUC rests on a handful of exams)."""
    from orthodiff.heads.metrics import MIN_SUPPORT

    def header(task):
        pos, neg = counts[task]
        flag = " **low support**" if min(pos, neg) < MIN_SUPPORT else ""
        return f"{task} AUC (95% CI), test {pos}+ / {neg}-{flag}"

    lines = ["| grid | model | " + " | ".join(header(t) for t in tasks) + " | paper, MRNet (abn / ACL / men) |",
             "|---|---|" + "---|" * len(tasks) + "---|"]
    for (grid, model), part in table.groupby(["grid", "model"], sort=False):
        cells = []
        for task in tasks:
            row = part[part.task == task]
            if not len(row):
                cells.append("")
                continue
            row = row.iloc[0]
            ci = row["auc_ci"] if isinstance(row["auc_ci"], (list, tuple)) else json.loads(str(row["auc_ci"]))
            cells.append(f"{row['auc']:.2f} ({ci[0]:.2f}-{ci[1]:.2f})")
        lines.append(f"| {grid}x{grid}x{grid} | {model} | " + " | ".join(cells) + f" | {PAPER.get((model, grid), '')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
