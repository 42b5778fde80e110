"""Overlap and surface metrics per series and structure (MONAI), and their aggregation
series -> subject -> dataset into tiered tables (dataset, tissue type, label)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from orthodiff.catalogs.tasks import StructureSet

METRICS = ("dice", "iou", "hd95", "nsd")


def _one_hot(mask: np.ndarray, n_classes: int) -> torch.Tensor:
    labels = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))
    return torch.nn.functional.one_hot(labels, n_classes).permute(3, 0, 1, 2)[None].bool()


def series_metrics(pred: np.ndarray, true: np.ndarray, spacing, structure_set: StructureSet,
                   nsd_tolerance: float = 1.0) -> pd.DataFrame:
    """One row per structure: Dice, IoU, HD95 (mm) and NSD at `nsd_tolerance` mm, with
    `spacing` the (slice, row, column) voxel size in mm. A structure absent from the
    reference gets NaN everywhere (undefined, left out of every mean); one absent from the
    prediction only gets Dice = IoU = NSD = 0 and HD95 NaN."""
    import warnings

    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou, compute_surface_dice

    n = max(structure_set.values) + 1
    p, t = _one_hot(pred, n), _one_hot(true, n)
    spacing = [float(s) for s in spacing]
    dice = compute_dice(p, t, include_background=False, ignore_empty=True)[0]
    iou = compute_iou(p, t, include_background=False, ignore_empty=True)[0]
    with warnings.catch_warnings():  # MONAI warns of every empty structure; handled below
        warnings.simplefilter("ignore")
        hd95 = compute_hausdorff_distance(p, t, include_background=False, percentile=95, spacing=spacing)[0]
        nsd = compute_surface_dice(p, t, [nsd_tolerance] * (n - 1), include_background=False, spacing=spacing)[0]
    rows = []
    for s in structure_set.structures:
        k = s.value - 1
        in_ref, in_pred = bool(t[0, s.value].any()), bool(p[0, s.value].any())
        row = {"structure": s.abbr, "tissue": s.tissue, "dice": float(dice[k]), "iou": float(iou[k]),
               "hd95": float(hd95[k]), "nsd": float(nsd[k])}
        if not in_ref:
            row.update(dice=np.nan, iou=np.nan, hd95=np.nan, nsd=np.nan)
        elif not in_pred:
            row.update(dice=0.0, iou=0.0, hd95=np.nan, nsd=0.0)
        rows.append(row)
    return pd.DataFrame(rows)


def subject_scores(per_series: pd.DataFrame) -> pd.DataFrame:
    """Per model, dataset, subject and structure: the mean over the subject's series."""
    keys = ["model", "dataset", "subject", "structure", "tissue"]
    return per_series.groupby(keys, sort=True)[list(METRICS)].mean().reset_index()


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
