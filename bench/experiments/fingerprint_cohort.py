"""Bench: healthy personas and radiomic fingerprints on the default synthetic cohort (the
folder `orthodiff demo` leaves), one plane, the box grids 1x1x1, 2x2x2 and 3x3x3, without
and with affine registration: the paper's results table.

    .venv/bin/orthodiff demo --out orthodiff-demo
    .venv/bin/python bench/experiments/personas_healthy.py --out runs/personas_healthy     # the healthy backbone
    .venv/bin/python bench/experiments/fingerprint_cohort.py --demo orthodiff-demo \
        --backbone runs/personas_healthy/healthy_sagittal.pt --page docs/results/personas.md

Steps (each resumable; a rerun reuses what is complete), per registration (`none`: the
demo's store; `affine`: `orthodiff register --similarity S` of the plane into
`DEMO/fingerprint/affine_<S>.zarr`, once per `--similarity`, named `affine (<S>)` in the tables):
1. the healthy backbone: `--backbone` (e.g. the one `personas_healthy.py` trains on a cohort
   with many healthy exams), else `pretrain --healthy` of the plane (demo preset) on the
   training series of exams whose labels are all 0 -> `DEMO/fingerprint/healthy_<plane>.pt`;
2. `persona` of every series of the plane on the central box (one inpainting serves every
   grid: the cells of all grids split the same box);
3. `persona-fidelity` (`personas.fidelity.persona_fidelity`) per split: SSIM / MSE inside the
   box on healthy exams beside the mean- and blur-filled box (the paper: SSIM 0.92), the
   localisation score on lesion exams of the test split (unregistered store only: the
   registered one has no structure masks);
4. `radiomics` (all families, image / persona / residual) for each grid, on those personas;
5. `fingerprint` for each task (abnormal, ACL, meniscus) and grid: the fingerprint head (with
   and without the persona sources) and its comparators fitted on train, thresholded on
   val, scored on test: AUC, accuracy, sensitivity, specificity with 95% CIs resampling patients.

Writes `DEMO/fingerprint/{fidelity_<registration>/, table.csv, table.md}` and one
`orthodiff fingerprint` run directory per (registration, grid, task) under
`DEMO/fingerprint/runs/`; with `--page`, the tables into that docs page (between its
`<!-- fingerprint table -->` markers).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

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


def fidelity(store: str, catalog: pd.DataFrame, plane: str, backbone: str, out: Path) -> pd.DataFrame:
    """Persona fidelity per split (`personas.fidelity.persona_fidelity`; tables under `out/<split>`):
    one row per split and completion (persona, mean fill, blur fill) with SSIM and MSE (95% CIs)."""
    from orthodiff.errors import OrthodiffError
    from orthodiff.personas.fidelity import persona_fidelity
    from orthodiff.personas.reader import open_personas

    ds = open_personas(store, plane, backbone)
    rows = []
    for split in ("train", "val", "test"):
        try:
            tables = persona_fidelity(ds, catalog, split, out / split)
        except OrthodiffError:  # no healthy or lesion exam of this split
            continue
        if tables["reproduction"].series.max():
            rows.append(tables["reproduction"].assign(split=split))
    return pd.concat(rows) if rows else pd.DataFrame()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("orthodiff-demo"))
    parser.add_argument("--plane", default="sagittal")
    parser.add_argument("--backbone", type=Path, help="healthy backbone of the plane (default: pretrain one here)")
    parser.add_argument("--pretrain-steps", type=int, default=40)
    parser.add_argument("--pretrain-lr", type=float, default=2e-4)
    parser.add_argument("--persona-steps", type=int, default=10)
    parser.add_argument("--jumps", type=int, default=1)
    parser.add_argument("--registrations", default="none,affine")
    parser.add_argument("--similarity", default="correlation,mattes",
                        help="the affine registrations' metrics (`orthodiff register --similarity`), comma-separated")
    parser.add_argument("--grids", default="1,2,3")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--bootstrap", type=int, default=500)
    parser.add_argument("--page", type=Path, help="docs page whose fingerprint-table section gets the tables")
    args = parser.parse_args()

    from orthodiff.backbone import backbone_id
    from orthodiff.backbone.pretrain import pretrain
    from orthodiff.catalogs.cohort import read_catalog
    from orthodiff.featurestore.volumes import open_volumes
    from orthodiff.heads.fingerprint_cohort import run_fingerprint
    from orthodiff.personas.registration import register_store
    from orthodiff.personas.store import make_personas
    from orthodiff.radiomics.store import extract_radiomics
    from orthodiff.tables import frame_table, make_console

    console = make_console()
    base, catalog_path = str(args.demo / "store.zarr"), args.demo / "cohort" / "catalog.parquet"
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

    healthy = args.backbone or out / f"healthy_{args.plane}.pt"
    if not healthy.exists():
        console.rule(f"1. pretrain --healthy {args.plane}: {args.pretrain_steps} steps of 4")
        timed("pretrain", pretrain, open_volumes(base), args.plane, "demo", args.pretrain_steps, 4, healthy, every=10,
              lr=args.pretrain_lr, seed=0, healthy_catalog=catalog_path)
    bid = backbone_id(healthy)
    rows, fidelities = [], []
    registrations = [(r, None) for r in args.registrations.split(",") if r != "affine"]
    if "affine" in args.registrations.split(","):
        registrations += [(f"affine ({s})", s) for s in args.similarity.split(",")]
    for registration, similarity in registrations:
        store = base
        if similarity:
            store = str(out / f"affine_{similarity}.zarr")
            if not (Path(store) / f"registration_{args.plane}.csv").exists():
                console.rule(f"affine registration ({similarity}) of the {args.plane} series to their mean training volume")
                timed(f"register {similarity}", register_store, base, args.plane, store, similarity=similarity)
        console.rule(f"2. ({registration}) personas of every {args.plane} series: central box, "
                     f"{args.persona_steps} steps x {args.jumps} jumps, backbone {bid}")
        made = timed(f"persona {registration}", make_personas, store, healthy, args.plane, "box", 3, args.persona_steps,
                     args.jumps)
        console.print(made)
        console.rule(f"3. ({registration}) persona fidelity")
        slug = registration.replace(" (", "_").rstrip(")")
        rep = fidelity(store, catalog, args.plane, bid, out / f"fidelity_{slug}")
        if len(rep):
            fidelities.append(rep.assign(registration=registration))
            console.print(frame_table(rep.round(3), f"{args.plane} personas of healthy exams (inside the box)"))
        for grid in [int(g) for g in args.grids.split(",")]:
            console.rule(f"4. ({registration}) radiomics, {grid}x{grid}x{grid} grid")
            summary = timed(f"radiomics {registration} grid {grid}", extract_radiomics, store, args.plane, grid=grid,
                            persona_backbone=bid)
            for task in args.tasks.split(","):
                run = out / "runs" / slug / f"grid{grid}_{task}"
                if not (run / "metrics.csv").exists() or json.loads((run / "run.json").read_text())["settings"] != summary["settings"]:
                    console.rule(f"5. ({registration}) fingerprint, {task}, {grid}x{grid}x{grid}")
                    timed(f"fingerprint {registration} grid {grid} {task}", run_fingerprint, store, catalog_path, task,
                          run, settings=summary["settings"], epochs=args.epochs, n_boot=args.bootstrap)
                table = pd.read_csv(run / "metrics.csv")
                rows.append(table.assign(grid=grid, task=task, registration=registration))
    table = pd.concat(rows)
    table.to_csv(out / "table.csv", index=False)
    tasks = args.tasks.split(",")
    text = markdown(table, tasks, test_counts(catalog, tasks))
    if fidelities:
        text += "\n" + fidelity_markdown(pd.concat(fidelities))
    (out / "table.md").write_text(text)
    console.print(text)
    if args.page:
        from personas_healthy import replace_section  # this script's folder is on the path

        command = "python bench/experiments/fingerprint_cohort.py " + " ".join(sys.argv[1:])
        replace_section(args.page, "fingerprint table", f"Made by `{command}` (backbone `{bid}`, personas "
                        f"{args.persona_steps} steps x {args.jumps} jumps; timings in s on the machine as loaded: "
                        f"{json.dumps(timings)}).\n\n{text}")
    console.print(f"timings (s, loaded machine): {timings}")


def test_counts(catalog: pd.DataFrame, tasks) -> dict[str, tuple[int, int]]:
    """task -> (positive, negative) exams of the test split."""
    from orthodiff.heads.fingerprint_cohort import target

    test = catalog.groupby("case_id")["split"].first() == "test"
    return {task: (int(target(catalog, task)[test].sum()), int((1 - target(catalog, task))[test].sum())) for task in tasks}


def _ci(row, metric: str) -> str:
    ci = row[f"{metric}_ci"] if isinstance(row[f"{metric}_ci"], (list, tuple)) else json.loads(str(row[f"{metric}_ci"]))
    return f"{row[metric]:.2f} ({ci[0]:.2f}-{ci[1]:.2f})"


def markdown(table: pd.DataFrame, tasks, counts: dict[str, tuple[int, int]]) -> str:
    """Per registration, one row per (grid, model): test AUC (95% CI) per task and the paper's
    AUC where it has one; then per task, AUC, accuracy, sensitivity and specificity (95% CIs).

    `counts`: task -> (positive, negative) exams of the test split; a task with fewer than
    MIN_SUPPORT of either is flagged in its header (its AUC rests on a handful of exams)."""
    from orthodiff.heads.metrics import MIN_SUPPORT

    if "registration" not in table:
        table = table.assign(registration="none")

    def header(task):
        pos, neg = counts[task]
        flag = " **low support**" if min(pos, neg) < MIN_SUPPORT else ""
        return f"{task} AUC (95% CI), test {pos}+ / {neg}-{flag}"

    lines = []
    for registration, part_r in table.groupby("registration", sort=False):
        lines += [f"#### Registration: {registration}", "",
                  "| grid | model | " + " | ".join(header(t) for t in tasks) + " | paper, MRNet (abn / ACL / men) |",
                  "|---|---|" + "---|" * len(tasks) + "---|"]
        for (grid, model), part in part_r.groupby(["grid", "model"], sort=False):
            cells = [_ci(part[part.task == task].iloc[0], "auc") if (part.task == task).any() else "" for task in tasks]
            lines.append(f"| {grid}x{grid}x{grid} | {model} | " + " | ".join(cells) + f" | {PAPER.get((model, grid), '')} |")
        lines.append("")
    for task in tasks:
        lines += [f"#### {header(task).split(' AUC')[0]}: all metrics at the validation-chosen threshold", "",
                  "| registration | grid | model | AUC | accuracy | sensitivity | specificity |", "|---|---|---|---|---|---|---|"]
        for row in table[table.task == task].to_dict("records"):
            lines.append(f"| {row['registration']} | {row['grid']}x{row['grid']}x{row['grid']} | {row['model']} | "
                         + " | ".join(_ci(row, m) for m in ("auc", "accuracy", "sensitivity", "specificity")) + " |")
        lines.append("")
    return "\n".join(lines)


def fidelity_markdown(fidelity: pd.DataFrame) -> str:
    """Persona SSIM / MSE inside the box on healthy exams beside the two fills, per registration and split."""
    lines = ["#### Persona fidelity on healthy exams (inside the box)", "",
             "| registration | split | completion | series | SSIM (95% CI) | MSE 0-255 (95% CI) |", "|---|---|---|---|---|---|"]
    for row in fidelity.itertuples():
        lines.append(f"| {row.registration} | {row.split} | {row.completion} | {row.series} | {row.ssim:.3f} "
                     f"({row.ssim_low:.3f}-{row.ssim_high:.3f}) | {row.mse_255:.0f} ({row.mse_255_low:.0f}-{row.mse_255_high:.0f}) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
