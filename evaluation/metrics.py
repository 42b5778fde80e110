"""Overlap and surface metrics per series and structure (MONAI), Dice and IoU per slice,
and their aggregation slice/series -> subject -> dataset into tiered tables (dataset,
tissue type, label).

Scoring conventions (nnU-Net's evaluation and MONAI with `ignore_empty=False` agree on the
first two; the third is where we differ from MONAI, which scores it 1):
- structure in the reference, missing from the prediction (`missed`): Dice = IoU = NSD = 0,
  HD95 undefined (NaN: no predicted surface to measure from);
- structure missing from the reference, present in the prediction (`false_positive`):
  Dice = IoU = NSD = 0, HD95 undefined (NaN: no reference surface), so a hallucinated
  structure lowers every mean it enters;
- structure in neither (`both_empty`): every metric undefined (NaN) and left out of every
  mean; a perfect score for an absent structure would inflate means by how often it is absent.
Each row says which case it is (`case`; `scored` for a structure in both) and tables count
the cases per structure (`case_counts`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from orthodiff.catalogs.tasks import StructureSet
from orthodiff.errors import OrthodiffError

METRICS = ("dice", "iou", "hd95", "nsd")
OVERLAP = ("dice", "iou")
CASES = ("scored", "missed", "false_positive", "both_empty")
LEVELS = ("slice", "series")  # where Dice and IoU are computed (options.OverlapLevel)
WHY = {"missed": "HD95 undefined: the prediction has no surface", "false_positive": "HD95 undefined: the reference has no surface",
       "both_empty": "undefined: structure in neither mask", "scored": ""}


def case_of(in_ref, in_pred) -> np.ndarray:
    """The scoring case of each (reference present, prediction present) pair."""
    in_ref, in_pred = np.asarray(in_ref, bool), np.asarray(in_pred, bool)
    return np.select([in_ref & in_pred, in_ref, in_pred], ["scored", "missed", "false_positive"], "both_empty")


def _one_hot(mask: np.ndarray, n_classes: int) -> torch.Tensor:
    labels = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))
    return torch.nn.functional.one_hot(labels, n_classes).permute(3, 0, 1, 2)[None].bool()


def series_metrics(pred: np.ndarray, true: np.ndarray, spacing, structure_set: StructureSet,
                   nsd_tolerance: float = 1.0) -> pd.DataFrame:
    """One row per structure: Dice, IoU, HD95 (mm) and NSD at `nsd_tolerance` mm, with
    `spacing` the (slice, row, column) voxel size in mm, its `case` and the `reason` of any
    NaN (the module's conventions)."""
    import warnings

    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou, compute_surface_dice

    n = max(structure_set.values) + 1
    p, t = _one_hot(pred, n), _one_hot(true, n)
    spacing = [float(s) for s in spacing]
    dice = compute_dice(p, t, include_background=False, ignore_empty=False)[0]
    iou = compute_iou(p, t, include_background=False, ignore_empty=False)[0]
    with warnings.catch_warnings():  # MONAI warns of every empty structure; handled below
        warnings.simplefilter("ignore")
        hd95 = compute_hausdorff_distance(p, t, include_background=False, percentile=95, spacing=spacing)[0]
        nsd = compute_surface_dice(p, t, [nsd_tolerance] * (n - 1), include_background=False, spacing=spacing)[0]
    rows = []
    for s in structure_set.structures:
        k = s.value - 1
        case = str(case_of(t[0, s.value].any(), p[0, s.value].any()))
        row = {"structure": s.abbr, "tissue": s.tissue, "dice": float(dice[k]), "iou": float(iou[k]),
               "hd95": float(hd95[k]), "nsd": float(nsd[k]), "case": case, "reason": WHY[case]}
        if case == "both_empty":
            row.update(dice=np.nan, iou=np.nan, hd95=np.nan, nsd=np.nan)
        elif case != "scored":
            row.update(dice=0.0, iou=0.0, hd95=np.nan, nsd=0.0)
        rows.append(row)
    return pd.DataFrame(rows)


def overlap(pred: np.ndarray, true: np.ndarray, structure_set: StructureSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Dice, IoU, case), each (units, structures), of every unit along the first axis of a
    pair of label arrays (slices of a volume, series of a batch), with the module's
    conventions (a structure in neither mask of a unit is NaN there, one only in the
    prediction scores 0). Counted with numpy rather than MONAI: one bincount serves every
    unit and structure, where MONAI would one-hot the arrays once per unit; `tests` check
    the two agree."""
    pred, true = np.asarray(pred), np.asarray(true)
    if pred.shape != true.shape:
        raise OrthodiffError(f"prediction shape {pred.shape} differs from the reference's {true.shape}")
    n = max(structure_set.values) + 1
    units = pred.shape[0]
    z = np.arange(units).reshape((-1,) + (1,) * (pred.ndim - 1)) * n
    count = lambda a: np.bincount((z + a).ravel(), minlength=units * n).reshape(-1, n)  # noqa: E731
    values = np.asarray(structure_set.values)  # background (0) collects every disagreement below
    inter, sp, st = (count(a)[:, values] for a in (np.where(pred == true, true, 0), pred, true))
    with np.errstate(invalid="ignore", divide="ignore"):
        dice, iou = 2 * inter / (sp + st), inter / (sp + st - inter)
    case = case_of(st > 0, sp > 0)
    return np.where(case == "both_empty", np.nan, dice), np.where(case == "both_empty", np.nan, iou), case


def slice_overlap(pred: np.ndarray, true: np.ndarray, structure_set: StructureSet) -> pd.DataFrame:
    """Dice and IoU of every (slice, structure) of a (slices, rows, columns) pair (`overlap`
    per slice)."""
    pred = np.asarray(pred)
    dice, iou, case = overlap(pred, true, structure_set)
    k = len(structure_set.values)
    return pd.DataFrame({"slice": np.repeat(np.arange(pred.shape[0]), k),
                         "structure": np.tile([s.abbr for s in structure_set.structures], pred.shape[0]),
                         "tissue": np.tile([s.tissue for s in structure_set.structures], pred.shape[0]),
                         "dice": dice.ravel(), "iou": iou.ravel(), "case": case.ravel()})


def case_counts(table: pd.DataFrame, unit: str = "series") -> pd.DataFrame:
    """Per model, dataset and structure: how many `unit`s (series or slices) fall in each
    scoring case."""
    keys = ["model", "dataset", "structure"]
    counts = table.groupby(keys)["case"].value_counts().unstack(fill_value=0).reindex(columns=list(CASES), fill_value=0)
    return counts.add_suffix(f"_{unit}").reset_index().rename_axis(columns=None)


def subject_scores(per_series: pd.DataFrame, per_slice: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per model, dataset, subject and structure: the mean over the subject's series; with
    `per_slice` (`slice_overlap` rows), Dice and IoU are the mean over every slice of the
    subject's series where they are defined (the paper's slice -> subject -> dataset)."""
    keys = ["model", "dataset", "subject", "structure", "tissue"]
    out = per_series.groupby(keys, sort=True)[list(METRICS)].mean()
    if per_slice is not None:
        out[list(OVERLAP)] = per_slice.groupby(keys)[list(OVERLAP)].mean().reindex(out.index)
    return out.reset_index()


def subject_dice(per_subject: pd.DataFrame) -> pd.DataFrame:
    """Subject Dice: per model, dataset and subject, the mean over structures."""
    return per_subject.groupby(["model", "dataset", "subject"])[list(METRICS)].mean().reset_index()


def tiered_tables(per_subject: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Three tiers, each a mean and SD over subjects of per-subject means: `dataset`
    (all structures), `tissue` (structures of one tissue type), `label` (one structure)."""
    out = {}
    for tier, extra in (("dataset", []), ("tissue", ["tissue"]), ("label", ["tissue", "structure"])):
        per = per_subject.groupby(["model", "dataset", *extra, "subject"])[list(METRICS)].mean().reset_index()
        grouped = per.groupby(["model", "dataset", *extra])
        table = grouped[list(METRICS)].mean()
        table = table.join(grouped["dice"].std().rename("dice_sd")).join(grouped["subject"].nunique().rename("subjects"))
        out[tier] = table.reset_index()
    return out


def dice_tiers(tiers: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The paper's tiered Dice table: one row per dataset (tier `dataset`), per dataset and
    tissue (`tissue`) and per dataset and structure (`label`), one column of mean subject
    Dice per model."""
    parts = []
    for tier, table in tiers.items():
        keys = ["dataset", *[c for c in ("tissue", "structure") if c in table.columns]]
        wide = table.pivot(index=keys, columns="model", values="dice").reset_index()
        parts.append(wide.assign(tier=tier))
    out = pd.concat(parts, ignore_index=True).rename_axis(columns=None)
    first = ["tier", "dataset", "tissue", "structure"]
    return out.reindex(columns=first + [c for c in out.columns if c not in first])
