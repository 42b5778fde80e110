"""The evaluation's scoring conventions, reference cleaning and slice-level overlap, checked
against MONAI (`monai.metrics.compute_dice`/`compute_iou` with `ignore_empty=False`) and
hand counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from orthodiff.catalogs.tasks import structures

KNEE = structures("knee")


def _monai(pred, true, fn):
    from monai.metrics import compute_dice, compute_iou

    metric = {"dice": compute_dice, "iou": compute_iou}[fn]
    one_hot = lambda m: torch.nn.functional.one_hot(torch.as_tensor(m, dtype=torch.int64), 12).movedim(-1, 0)[None]  # noqa: E731
    return metric(one_hot(pred), one_hot(true), include_background=False, ignore_empty=False)[0].numpy()


def test_empty_structures_score_zero_or_are_undefined_and_are_counted():
    from orthodiff.evaluation.metrics import case_counts, series_metrics

    true = np.zeros((6, 16, 16), np.uint8)
    true[1:5, 2:8, 2:8] = 1  # femur in both
    true[1:5, 10:14, 10:14] = 4  # femoral cartilage: missed by the prediction
    pred = true.copy()
    pred[pred == 4] = 0
    pred[2:4, 10:13, 2:6] = 2  # tibia: only in the prediction (a hallucinated structure)
    table = series_metrics(pred, true, (2.0, 1.0, 1.0), KNEE).set_index("structure")
    monai_dice, monai_iou = _monai(pred, true, "dice"), _monai(pred, true, "iou")
    tibia, fc, patella = table.loc["Tibia"], table.loc["FC"], table.loc["Patella"]
    assert tibia["case"] == "false_positive" and tibia[["dice", "iou", "nsd"]].tolist() == [0.0, 0.0, 0.0]
    assert monai_dice[1] == tibia["dice"] and monai_iou[1] == tibia["iou"]  # MONAI, ignore_empty=False, agrees
    assert np.isnan(tibia["hd95"]) and "reference has no surface" in tibia["reason"]
    assert fc["case"] == "missed" and fc[["dice", "iou", "nsd"]].tolist() == [0.0, 0.0, 0.0] and np.isnan(fc["hd95"])
    assert "prediction has no surface" in fc["reason"]
    assert patella["case"] == "both_empty" and patella[["dice", "iou", "hd95", "nsd"]].isna().all()
    assert monai_dice[2] == 1.0  # where MONAI differs: it scores an absent structure as perfect
    assert table.loc["Femur", "case"] == "scored" and table.loc["Femur", "dice"] == 1.0
    counts = case_counts(pd.concat([table.reset_index().assign(model="m", dataset="d", series_id=s) for s in "ab"]))
    counts = counts.set_index("structure")
    assert counts.loc["Tibia", "false_positive_series"] == 2 and counts.loc["Patella", "both_empty_series"] == 2
    assert counts.loc["FC", "missed_series"] == 2 and counts.loc["Femur", "scored_series"] == 2


def test_slice_overlap_is_monai_per_slice_with_both_empty_undefined():
    from orthodiff.evaluation.metrics import slice_overlap

    rng = np.random.default_rng(0)
    true = rng.choice([0, 1, 2, 4], size=(5, 12, 12), p=[0.6, 0.2, 0.1, 0.1]).astype(np.uint8)
    pred = np.where(rng.random(true.shape) < 0.2, rng.choice([0, 1, 2, 4], true.shape), true).astype(np.uint8)
    true[3][true[3] == 4] = 0  # on slice 3, FC is only predicted
    pred[4][pred[4] == 4], true[4][true[4] == 4] = 0, 0  # on slice 4, in neither
    table = slice_overlap(pred, true, KNEE).set_index(["slice", "structure"])
    for z in range(5):
        for fn in ("dice", "iou"):
            expected = _monai(pred[z][None], true[z][None], fn)
            got = table.xs(z, level="slice").loc[[s.abbr for s in KNEE.structures], fn].to_numpy()
            defined = ~np.isnan(got)
            assert got[defined] == pytest.approx(expected[defined])
    assert table.loc[(3, "FC"), "case"] == "false_positive" and table.loc[(3, "FC"), "dice"] == 0.0
    assert table.loc[(4, "FC"), "case"] == "both_empty" and np.isnan(table.loc[(4, "FC"), "dice"])


def test_subject_overlap_averages_slices_not_series():
    from orthodiff.evaluation.metrics import series_metrics, slice_overlap, subject_scores

    true = np.zeros((4, 10, 10), np.uint8)
    true[:, 2:8, 2:8] = 1
    pred = true.copy()
    pred[0] = 0  # one slice missed entirely: slice Dice 0, 1, 1, 1
    ids = {"model": "m", "dataset": "d", "subject": "s", "series_id": "x"}
    per_series = series_metrics(pred, true, (1, 1, 1), KNEE).assign(**ids)
    per_slice = slice_overlap(pred, true, KNEE).assign(**ids)
    femur = lambda t: t.set_index("structure").loc["Femur", "dice"]  # noqa: E731
    assert femur(subject_scores(per_series, per_slice)) == pytest.approx(0.75)
    assert femur(subject_scores(per_series)) == pytest.approx(2 * 108 / (108 + 144))


def test_reference_cleaning_drops_small_components_per_slice_then_volume():
    from orthodiff.evaluation.inputs import clean_mask

    mask = np.zeros((12, 40, 40), np.uint8)
    mask[:, 0:12, 0:12] = 1  # 144 px per slice, 1728 voxels: kept
    mask[0, 20:29, 20:29] = 1  # 81 px on one slice: under 100 px, removed
    mask[2:10, 30:40, 30:40] = 2  # 100 px per slice but 800 voxels: under 1,000, removed
    mask[0:12, 30:40, 0:10] = 3  # 1,200 voxels of 100 px slices: kept
    cleaned, removed = clean_mask(mask)
    assert removed == 81 + 800
    assert set(np.unique(cleaned)) == {0, 1, 3} and (cleaned[:, 0:12, 0:12] == 1).all()
    # the island is a small volume too: the volume step alone removes it as well
    assert clean_mask(mask, 0, 0)[1] == 0 and clean_mask(mask, 0, 1000)[1] == 881 and clean_mask(mask, 100, 0)[1] == 81
