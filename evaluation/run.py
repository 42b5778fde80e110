"""`orthodiff evaluate seg`: every model's masks against the reference, written as tables,
figures and one HTML page under the output folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from orthodiff import pages
from orthodiff.files import series_file
from orthodiff.outputs import write_json, write_table

REFERENCE = "reference"


def dataset_names(rows: pd.DataFrame, columns) -> pd.Series:
    """A dataset per series: its values of `columns` joined by '_' (e.g. knee_sagittal)."""
    missing = [c for c in columns if c not in rows.columns]
    if missing:
        from orthodiff.errors import OrthodiffError

        raise OrthodiffError(f"catalog has no column {missing[0]!r} to name datasets by; choose --dataset-by from {list(rows.columns)}")
    return rows[list(columns)].astype(str).agg("_".join, axis=1)


def _crop(array, central: int):
    if not central or array is None or array.shape[0] <= central:
        return array
    start = (array.shape[0] - central) // 2
    return array[start : start + central]


def measure(models, catalog_path, split="test", central=0, dataset_by=("joint", "plane"), nsd_tolerance=1.0, progress=None,
            plane=None):
    """(per-series metrics, per-series biomarkers incl. the reference's, notes) for `models`."""
    from orthodiff.evaluation.biomarkers import series_biomarkers, spacing_of
    from orthodiff.evaluation.inputs import check_complete, load_mask, read_series, reference_rows
    from orthodiff.evaluation.metrics import series_metrics

    rows, structure_set = reference_rows(catalog_path, split, plane)
    rows = rows.assign(dataset=dataset_names(rows, dataset_by))
    for model in models:
        check_complete(model, rows["series_id"].tolist())
    metrics, markers, notes = [], [], []
    for row in rows.itertuples(index=False):
        series = read_series(row, catalog_path, structure_set)
        spacing = spacing_of(series.affine)
        reference, t2 = _crop(series.reference, central), _crop(series.t2, central)
        ids = {"series_id": row.series_id, "subject": row.patient_id, "dataset": row.dataset}
        masks = {REFERENCE: reference}
        for model in models:
            masks[model.name] = _crop(load_mask(series_file(model.masks, row.series_id), series.shape, series.affine,
                                                structure_set), central)
            table = series_metrics(masks[model.name], reference, spacing, structure_set, nsd_tolerance)
            metrics.append(table.assign(model=model.name, **ids))
        for name, mask in masks.items():
            values, why = series_biomarkers(mask, spacing, structure_set, t2)
            markers.append({"model": name, **ids, **values})
            notes += [{"model": name, "series_id": row.series_id, "note": n} for n in why]
        if progress:
            progress()
    columns = ["model", "dataset", "subject", "series_id"]
    metrics = pd.concat(metrics, ignore_index=True)
    metrics = metrics[columns + [c for c in metrics.columns if c not in columns]]
    return metrics, pd.DataFrame(markers), pd.DataFrame(notes, columns=["model", "series_id", "note"]), rows


def _html(out: Path, tables: dict[str, pd.DataFrame], figures: list[str], summary: dict) -> Path:
    """evaluation.html: every table inline, every figure as a data URI (one file to send)."""
    parts = ["<h1>Segmentation evaluation</h1>", f"<pre>{pages.esc(summary)}</pre>"]
    parts += [f"<h2>{pages.esc(name)}</h2>" + pages.table(table, float_format="{:.4g}") for name, table in tables.items()]
    parts += [f"<h2>{pages.esc(name)}</h2>" + pages.png((out / name).read_bytes(), name) for name in figures]
    return pages.write_page(out / "evaluation.html", "Segmentation evaluation", parts)


def run_evaluate_seg(model_dirs, catalog_path, out, split="test", central=0, dataset_by=("joint", "plane"), group="center",
                     nsd_tolerance=1.0, n_boot=2000, seed=0, progress=None, plane=None) -> dict[str, pd.DataFrame]:
    """Evaluate every model folder; write the tables (Parquet + CSV), figures and
    `evaluation.html` under `out`; return the tables by name."""
    from orthodiff.catalogs.cohort import read_catalog
    from orthodiff.evaluation.acquisition import acquisition_effects
    from orthodiff.evaluation.agreement import agreement_table
    from orthodiff.evaluation.comparison import compare_models
    from orthodiff.evaluation.inputs import models_of
    from orthodiff.evaluation.metrics import subject_dice, subject_scores, tiered_tables
    from orthodiff.evaluation.plots import agreement_panels, forest, raincloud

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = models_of(model_dirs)
    per_series, markers, notes, rows = measure(models, catalog_path, split, central, dataset_by, nsd_tolerance, progress, plane)
    per_subject = subject_scores(per_series)
    subjects = subject_dice(per_subject)
    tables = {"series_metrics": per_series, "subject_dice": subjects, **{f"tier_{k}": v for k, v in tiered_tables(per_subject).items()}}
    figures = ["raincloud.png"]
    raincloud(subjects, out / "raincloud.png")

    subject_markers = markers.drop(columns=["series_id", "dataset"]).groupby(["model", "subject"]).mean()
    reference = subject_markers.loc[REFERENCE]
    agreement = []
    for model in models:
        table = agreement_table(subject_markers.loc[model.name], reference, n_boot, seed)
        agreement.append(table.assign(model=model.name))
        clinical = table[table["biomarker"].str.contains("thickness|t2_")]  # volumes: in the table only
        if "method" in clinical and clinical["method"].isin(["parametric", "nonparametric"]).any():
            agreement_panels(subject_markers.loc[model.name], reference, clinical, out / f"agreement_{model.name}.png",
                             f"{model.name} vs reference, per subject")
            figures.append(f"agreement_{model.name}.png")
    agreement = pd.concat(agreement, ignore_index=True)
    tables.update(biomarkers=markers, agreement=agreement[["model", *[c for c in agreement.columns if c != "model"]]],
                  notes=notes)

    friedman, pairwise = compare_models(subjects)
    tables.update(friedman=friedman, wilcoxon=pairwise)

    summary = {"models": [m.name for m in models], "split": split, "plane": plane or "all", "series": len(rows), "subjects": int(rows["patient_id"].nunique()),
               "central_slices": central or "all", "nsd_tolerance_mm": nsd_tolerance, "dataset_by": list(dataset_by)}
    series_dice = per_series.groupby(["model", "series_id"])["dice"].mean().reset_index()
    catalog = read_catalog(catalog_path).assign(dataset=lambda c: dataset_names(c, dataset_by))
    try:
        effects, fit = acquisition_effects(series_dice, catalog, group, seed)
    except np.linalg.LinAlgError as err:  # e.g. fewer series than parameters: reported, not fatal
        summary["acquisition_model"] = {"fit": f"not fitted ({err})"}
    else:
        tables["acquisition_effects"] = effects
        summary["acquisition_model"] = fit
        forest(effects, out / "forest.png", f"Dice ~ acquisition + model + (1 | {fit['group_by']}), {fit['fit']}")
        figures.append("forest.png")

    for name, table in tables.items():
        write_table(table, out / name)
    write_json(summary, out / "evaluation.json")
    _html(out, {k: v for k, v in tables.items() if k not in ("series_metrics", "biomarkers")}, figures, summary)
    return tables
