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
            plane=None, min_pixels=100, min_voxels=1000):
    """(per-series metrics, per-slice Dice and IoU, per-series biomarkers incl. the
    reference's, notes, catalog rows) for `models`; the reference is cleaned first
    (`inputs.clean_mask` with `min_pixels` and `min_voxels`)."""
    from orthodiff.catalogs.geometry import spacing_of
    from orthodiff.evaluation.biomarkers import series_biomarkers
    from orthodiff.evaluation.inputs import check_complete, clean_mask, load_mask, read_series, reference_rows
    from orthodiff.evaluation.metrics import series_metrics, slice_overlap

    rows, structure_set = reference_rows(catalog_path, split, plane)
    rows = rows.assign(dataset=dataset_names(rows, dataset_by))
    for model in models:
        check_complete(model, rows["series_id"].tolist())
    metrics, slices, markers, notes = [], [], [], []
    for row in rows.itertuples(index=False):
        series = read_series(row, catalog_path, structure_set)
        spacing = spacing_of(series.affine)
        cleaned, removed = clean_mask(series.reference, min_pixels, min_voxels)
        if removed:
            notes.append({"model": REFERENCE, "series_id": row.series_id,
                          "note": f"removed {removed} voxels in components under {min_pixels} pixels per slice or "
                                  f"{min_voxels} voxels per volume before scoring"})
        reference, maps = _crop(cleaned, central), {k: _crop(v, central) for k, v in series.maps.items()}
        ids = {"series_id": row.series_id, "subject": row.patient_id, "dataset": row.dataset}
        masks = {REFERENCE: reference}
        for model in models:
            masks[model.name] = _crop(load_mask(series_file(model.masks, row.series_id), series.shape, series.affine,
                                                structure_set), central)
            table = series_metrics(masks[model.name], reference, spacing, structure_set, nsd_tolerance)
            metrics.append(table.assign(model=model.name, **ids))
            slices.append(slice_overlap(masks[model.name], reference, structure_set).assign(model=model.name, **ids))
        for name, mask in masks.items():
            values, why = series_biomarkers(mask, spacing, structure_set, maps)
            markers.append({"model": name, **ids, **values})
            notes += [{"model": name, "series_id": row.series_id, "note": n} for n in why]
        if progress:
            progress()
    columns = ["model", "dataset", "subject", "series_id"]
    metrics, slices = (pd.concat(t, ignore_index=True) for t in (metrics, slices))
    metrics = metrics[columns + [c for c in metrics.columns if c not in columns]]
    slices = slices[columns + [c for c in slices.columns if c not in columns]]
    notes = pd.DataFrame(notes, columns=["model", "series_id", "note"])
    return metrics, slices, pd.DataFrame(markers), notes, rows


def model_covariates(models) -> pd.DataFrame | None:
    """Fine-tuning covariates of the models whose run records them (`evaluate prompt`'s
    run.json): `encoder_finetuned` (0/1) and `box_shift` (training box shift, pixels)."""
    import json

    rows = {}
    for model in models:
        run = (model.masks.parent if model.masks.name == "masks" else model.masks) / "run.json"
        if run.is_file():
            record = json.loads(run.read_text())
            tuned = bool(record.get("finetune_epochs"))
            rows[model.name] = {"encoder_finetuned": float(tuned and bool(record.get("finetune_encoder"))),
                                "box_shift": float(record.get("train_shift") or 0) if tuned else 0.0}
    return pd.DataFrame.from_dict(rows, orient="index") if rows else None


CONVENTIONS = ("empty_structures", "agreement_icc")  # summary entries that state how things are scored


def _html(out: Path, tables: dict[str, pd.DataFrame], figures: list[str], summary: dict) -> Path:
    """evaluation.html: the run's settings, its scoring conventions and the acquisition
    model's fit as sections, then every table inline and every figure as a data URI (one
    file to send), with a contents line linking them."""
    settings = {k: v for k, v in summary.items() if k not in CONVENTIONS and k != "acquisition_model"}
    sections = {"Run": settings, "Scoring conventions": {k: summary[k] for k in CONVENTIONS if k in summary},
                "Acquisition model": summary.get("acquisition_model", {})}
    def anchor(name: str) -> str:
        return "s-" + "".join(c if c.isalnum() else "-" for c in name.lower())

    names = [*sections, *tables, *figures]
    parts = ["<h1>Segmentation evaluation</h1>",
             "<nav>" + "".join(f"<a href='#{anchor(n)}'>{pages.esc(n)}</a>" for n in names) + "</nav>"]
    parts += [f"<h2 id='{anchor(name)}'>{pages.esc(name)}</h2>" + pages.definitions(record) for name, record in sections.items()]
    parts += [f"<h2 id='{anchor(name)}'>{pages.esc(name)}</h2>" + pages.table(table, float_format="{:.4g}")
              for name, table in tables.items()]
    parts += [f"<h2 id='{anchor(name)}'>{pages.esc(name)}</h2>" + pages.png((out / name).read_bytes(), name) for name in figures]
    return pages.write_page(out / "evaluation.html", "Segmentation evaluation", parts)


def run_evaluate_seg(model_dirs, catalog_path, out, split="test", central=0, dataset_by=("joint", "plane"), group="center",
                     nsd_tolerance=1.0, n_boot=10000, seed=0, progress=None, plane=None, overlap_level="slice",
                     min_pixels=100, min_voxels=1000, interactions=True) -> dict[str, pd.DataFrame]:
    """Evaluate every model folder; write the tables (Parquet + CSV), figures and
    `evaluation.html` under `out`; return the tables by name. `overlap_level` "slice"
    (the paper) averages Dice and IoU over each subject's slices, "series" over its 3D
    series scores; HD95 and NSD are always per 3D series."""
    from orthodiff.catalogs.cohort import read_catalog
    from orthodiff.evaluation.acquisition import acquisition_effects
    from orthodiff.evaluation.agreement import agreement_table
    from orthodiff.evaluation.biomarkers import CLINICAL
    from orthodiff.evaluation.comparison import compare_models
    from orthodiff.evaluation.inputs import models_of
    from orthodiff.errors import OrthodiffError
    from orthodiff.evaluation.metrics import LEVELS, case_counts, dice_tiers, subject_dice, subject_scores, tiered_tables
    from orthodiff.evaluation.plots import agreement_panels, forest, raincloud

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = models_of(model_dirs)
    if overlap_level not in LEVELS:
        raise OrthodiffError(f"unknown overlap level {overlap_level!r}; choose one of {', '.join(LEVELS)}")
    per_series, per_slice, markers, notes, rows = measure(models, catalog_path, split, central, dataset_by, nsd_tolerance,
                                                          progress, plane, min_pixels, min_voxels)
    per_subject = subject_scores(per_series, per_slice if overlap_level == "slice" else None)
    subjects = subject_dice(per_subject)
    counts = case_counts(per_series).merge(case_counts(per_slice, "slices"), on=["model", "dataset", "structure"])
    tiers = tiered_tables(per_subject)
    tiers["label"] = tiers["label"].merge(counts, on=["model", "dataset", "structure"], how="left")
    tables = {"dice_tiers": dice_tiers(tiers), "series_metrics": per_series, "slice_metrics": per_slice,
              "subject_dice": subjects, "case_counts": counts, **{f"tier_{k}": v for k, v in tiers.items()}}
    figures = ["raincloud.png"]
    raincloud(subjects, out / "raincloud.png")

    subject_markers = markers.drop(columns=["series_id", "dataset"]).groupby(["model", "subject"]).mean()
    reference = subject_markers.loc[REFERENCE]
    agreement = []
    for model in models:
        table = agreement_table(subject_markers.loc[model.name], reference, n_boot, seed)
        agreement.append(table.assign(model=model.name))
        clinical = table[table["biomarker"].str.contains(CLINICAL)]
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
               "central_slices": central or "all", "nsd_tolerance_mm": nsd_tolerance, "dataset_by": list(dataset_by),
               "overlap_level": overlap_level, "reference_cleaning": {"min_pixels_per_slice": min_pixels, "min_voxels": min_voxels},
               "agreement_icc": "parametric: ICC(3,1) (consistency, the paper's) with its F-distribution CI; non-parametric: "
                                "the mixed model's between-subject variance share, bootstrap median and 2.5-97.5 percentiles; "
                                "every row also gives ICC(2,1) = McGraw-Wong ICC(A,1) (absolute agreement) as icc_a1. "
                                "ICC(1,*) (raters not identified) and the k-rater averages do not fit one model against "
                                "one fixed reference.",
               "empty_structures": "reference empty, prediction not: Dice = IoU = NSD = 0, HD95 NaN; both empty: NaN, "
                                   "left out of means (counted in case_counts)"}
    series_dice = per_series.groupby(["model", "series_id"])["dice"].mean().reset_index()
    catalog = read_catalog(catalog_path).assign(dataset=lambda c: dataset_names(c, dataset_by))
    try:
        effects, fit = acquisition_effects(series_dice, catalog, group, seed, model_covariates(models), interactions)
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
    _html(out, {k: v for k, v in tables.items() if k not in ("series_metrics", "slice_metrics", "biomarkers")}, figures, summary)
    return tables
