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


# Shrout & Fleiss (1979), Psychological Bulletin 86(2):420-428, Table 2: 6 targets x 4 judges,
# with the six ICCs of their Table 4 to two decimals.
SHROUT_FLEISS = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], float)
PUBLISHED = {"ICC(1,1)": 0.17, "ICC(2,1)": 0.29, "ICC(3,1)": 0.71, "ICC(1,k)": 0.44, "ICC(2,k)": 0.62, "ICC(3,k)": 0.91}
PINGOUIN_NAMES = {"ICC(1,1)": "ICC1", "ICC(2,1)": "ICC2", "ICC(3,1)": "ICC3", "ICC(1,k)": "ICC1k", "ICC(2,k)": "ICC2k",
                  "ICC(3,k)": "ICC3k"}


def _pingouin(ratings):
    import pingouin as pg

    n, k = ratings.shape
    long = pd.DataFrame({"s": np.repeat(np.arange(n), k), "r": np.tile(np.arange(k), n), "v": ratings.ravel()})
    table = pg.intraclass_corr(long, targets="s", raters="r", ratings="v")
    table["form"] = ["ICC(1,1)", "ICC(2,1)", "ICC(3,1)", "ICC(1,k)", "ICC(2,k)", "ICC(3,k)"]  # pingouin's row order
    return table.set_index("form")


def test_icc_forms_reproduce_shrout_fleiss_and_pingouin():
    from orthodiff.evaluation.agreement import icc
    from orthodiff.options import IccForm

    assert [f.value for f in IccForm] == list(PUBLISHED)
    rng = np.random.default_rng(3)
    other = rng.normal(0, 1, (15, 1)) + rng.normal(0, 0.6, (15, 3)) + [0.0, 0.4, -0.2]
    for ratings in (SHROUT_FLEISS, other):
        oracle = _pingouin(ratings)
        for form in IccForm:
            got = icc(ratings, form)
            assert got.form == form.value and got.reason == ""
            assert got.value == pytest.approx(oracle.loc[form.value, "ICC"], abs=1e-9)
            ci = oracle.loc[form.value, "CI95"] if "CI95" in oracle else oracle.loc[form.value, "CI95%"]
            assert [got.low, got.high] == pytest.approx(list(ci), abs=5e-3)  # pingouin prints CIs to 2 decimals
            assert got.low < got.value < got.high
    for form, value in PUBLISHED.items():
        assert round(icc(SHROUT_FLEISS, form).value, 2) == value


def test_icc_bad_input_and_constant_ratings():
    from orthodiff.errors import OrthodiffError
    from orthodiff.evaluation.agreement import agree, bootstrap_icc, icc

    for bad, message in ((np.ones(5), "subjects x raters"), (np.ones((1, 2)), "1 subject"),
                         (np.array([[1.0, np.nan], [2, 3]]), "finite")):
        with pytest.raises(OrthodiffError, match=message):
            icc(bad)
    with pytest.raises(ValueError):
        icc(SHROUT_FLEISS, "ICC(4,1)")
    constant = np.full((6, 2), 3.0)
    result = icc(constant, "ICC(2,1)")
    assert np.isnan(result.value) and "no between-subject variance" in result.reason
    assert np.isnan(bootstrap_icc(constant, 100).value) and "constant" in bootstrap_icc(constant, 100).reason
    row = agree(np.full(8, 2.0), np.arange(8.0))
    assert row["method"] == "none" and "constant model values" in row["reason"]
    assert "at least 4" in agree(np.array([1.0]), np.array([2.0]))["reason"]  # a single subject
    same = np.linspace(1, 2, 8)
    identical = agree(same, same.copy())
    assert identical["icc"] == 1.0 and np.isnan(identical["icc_low"]) and "no CI" in identical["reason"]


def test_nonparametric_icc_is_the_mixed_models_variance_ratio_over_draws():
    from orthodiff.evaluation.agreement import bootstrap_icc, mixed_model_icc, variance_ratio

    rng = np.random.default_rng(5)
    truth = rng.exponential(2.0, 12) ** 2
    pairs = np.stack([truth * 1.05 + rng.normal(0, 0.3, 12), truth], axis=-1)
    draws = pairs[rng.integers(0, 12, size=(4, 12))]
    noise = rng.normal(0, 1, (12, 2))  # no subject effect: REML's subject variance sits at its bound, 0
    for ratings in [pairs, *draws, noise]:
        assert variance_ratio(ratings) == pytest.approx(mixed_model_icc(ratings), abs=2e-3)
    result = bootstrap_icc(pairs, 2000, seed=1)
    assert result.low <= result.value <= result.high <= 1 and result.value > 0.9
    assert bootstrap_icc(pairs, 2000, seed=1) == result  # seeded


def test_split_stratified_by_sex_keeps_each_sexs_fractions():
    from orthodiff.catalogs.cohort import split_catalog
    from orthodiff.errors import OrthodiffError

    patients = [f"p{i:02d}" for i in range(40)]
    sex = ["F"] * 30 + ["M"] * 10
    df = pd.DataFrame({"patient_id": np.repeat(patients, 2), "sex": np.repeat(sex, 2), "series_id": range(80)})
    split = split_catalog(df, seed=4, val=0.2, test=0.2, stratify="sex").groupby("patient_id").first()
    counts = split.groupby(["sex", "split"]).size()
    assert counts[("F", "test")] == counts[("F", "val")] == 6 and counts[("M", "test")] == counts[("M", "val")] == 2
    assert split_catalog(df, seed=4).equals(split_catalog(df.assign(one="x"), seed=4, stratify="one").drop(columns="one"))
    with pytest.raises(OrthodiffError, match="no column 'gender'"):
        split_catalog(df, stratify="gender")


def test_disc_height_is_the_minimum_rectangles_short_side():
    from orthodiff.evaluation.biomarkers import disc_height

    rows, cols = np.mgrid[0:80, 0:80]
    angle = np.radians(20)  # a disc tilted by 20 degrees: 40 px long, 10 px high
    u = (cols - 40) * np.cos(angle) + (rows - 40) * np.sin(angle)
    v = -(cols - 40) * np.sin(angle) + (rows - 40) * np.cos(angle)
    disc = ((np.abs(u) <= 20) & (np.abs(v) <= 5))[None]
    spacing = (3.0, 0.5, 0.5)
    assert disc_height(disc, None, spacing) == pytest.approx(11 * 0.5, abs=0.5)  # 11 rows of pixels, within a pixel
    upright = np.zeros((2, 30, 30), bool)
    upright[0, 10:14, 5:25], upright[1, 10:17, 5:25] = True, True  # 4 and 7 rows: the maximum over slices
    assert disc_height(upright, None, (3.0, 0.8, 0.5)) == pytest.approx(7 * 0.8)
    assert np.isnan(disc_height(np.zeros((2, 5, 5), bool)))


@pytest.mark.parametrize("joint", ["spine", "thigh"])
def test_spine_and_thigh_phantoms_biomarkers_match_their_truth(joint, tmp_path):
    """Disc heights and thigh volumes measured on the phantoms' reference masks agree with the
    geometry they were drawn from: disc heights within one pixel, volumes within 3%."""
    import nibabel as nib

    from orthodiff.catalogs.cohort import read_catalog, resolve_path
    from orthodiff.catalogs.readers import read_series
    from orthodiff.catalogs.synth import synthesize
    from orthodiff.evaluation.biomarkers import series_biomarkers
    from orthodiff.catalogs.geometry import spacing_of

    catalog_path = synthesize(joint, 3, 128, 1, tmp_path / joint, progress=False, workers=1)
    catalog = read_catalog(catalog_path)
    assert set(catalog["joint"]) == {joint} and catalog["mask_path"].notna().all()
    checked = 0
    for row in catalog.itertuples():
        image = nib.load(resolve_path(catalog_path, row.mask_path))
        mask = np.asarray(image.dataobj).transpose(2, 1, 0)
        spacing = spacing_of(image.affine)
        values, _ = series_biomarkers(mask, spacing, structures(joint))
        for column in [c for c in catalog.columns if c.startswith("true_")]:
            truth, measured = getattr(row, column), values[column.removeprefix("true_")]
            if joint == "spine":
                assert abs(measured - truth) <= spacing[1] + 1e-6, (row.series_id, column, measured, truth)
            else:
                assert measured == pytest.approx(truth, rel=0.03), (row.series_id, column)
            checked += 1
    assert checked == (4 * 6 if joint == "spine" else 5 * 3)
    if joint == "spine":  # sagittal T1 and T2 of each subject: discs dark on T1, bright on T2, against the bodies
        first = catalog[catalog["patient_id"] == catalog["patient_id"].iloc[0]].set_index("sequence")
        mask = np.asarray(nib.load(resolve_path(catalog_path, first.loc["T1", "mask_path"])).dataobj).transpose(2, 1, 0)
        for sequence, brighter in (("T1", False), ("T2", True)):
            image = read_series(resolve_path(catalog_path, first.loc[sequence, "path"])).data
            assert (image[mask >= 2].mean() > image[mask == 1].mean()) == brighter, sequence


def test_gaussian_process_regression_follows_a_curved_relation(tmp_path):
    from orthodiff.evaluation.agreement import agree
    from orthodiff.evaluation.plots import agreement_panels, gaussian_process_fit

    rng = np.random.default_rng(0)
    model = np.sort(rng.exponential(2.0, 40))
    reference = np.sqrt(model) * 3 + rng.normal(0, 0.05, 40)
    mean, sd = gaussian_process_fit(model, reference, model)  # at the observed values: a sparse tail reverts to the mean
    assert np.abs(mean - np.sqrt(model) * 3).max() < 0.3 and (sd > 0).all()
    linear = np.polyval(np.polyfit(model, reference, 1), model)
    assert np.abs(mean - reference).mean() < np.abs(linear - reference).mean() / 3  # it follows the curve a line misses
    row = {"biomarker": "volume_QUAD", **agree(model, reference, n_boot=200)}
    assert row["method"] == "nonparametric"
    index = pd.Index([f"s{i}" for i in range(40)])
    agreement_panels(pd.DataFrame({"volume_QUAD": model}, index), pd.DataFrame({"volume_QUAD": reference}, index),
                     pd.DataFrame([row]), tmp_path / "panels.png", "test")
    assert (tmp_path / "panels.png").stat().st_size > 5000


def _linear_fit(**options):
    from orthodiff.training import train

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 3)).astype(np.float32), rng.normal(size=(32, 1)).astype(np.float32)
    steps = []
    options = {"epochs": 2, "lr": 0.05, "batch_size": 8, "random_state": 0, **options}
    train(model, [x], y, None, loss=lambda out, t, w: torch.nn.functional.mse_loss(out, t), on_step=lambda: steps.append(1),
          **options)
    return torch.cat([p.detach().ravel() for p in model.parameters()]), len(steps)


def test_the_papers_fine_tuning_recipe_options_of_the_training_loop():
    plain, steps = _linear_fit()
    accumulated, fewer = _linear_fit(batch_size=2, accumulate=4)  # 4 batches of 2 = one batch of 8
    assert torch.allclose(plain, accumulated, atol=1e-6) and fewer == steps == 8
    clipped, _ = _linear_fit(clip_norm=1e-3)
    assert not torch.allclose(plain, clipped)
    adam, _ = _linear_fit(weight_decay=0.5)
    adamw, _ = _linear_fit(weight_decay=0.5, optimizer="adamw")  # decoupled decay: another path
    assert not torch.allclose(adam, adamw)
    restarted, _ = _linear_fit(warm_restarts=1, optimizer="adamw", weight_decay=0.01)
    assert not torch.allclose(restarted, plain)
    losses = iter([1.0, 0.5, 0.6, 0.55, 0.7, 0.2])  # best after epoch 2, then 3 epochs without a 0.1 improvement
    stopped, epochs_run = _linear_fit(epochs=6, validate=lambda: next(losses), patience=3, min_delta=0.1, cosine=False)
    assert epochs_run == 5 * 4  # stopped after epoch 5 (4 steps an epoch)
    best, _ = _linear_fit(epochs=2, cosine=False)
    assert torch.allclose(stopped, best)  # the weights of epoch 2 restored


def test_mixed_model_scales_discrete_parameters_tests_its_imputation_and_fits_interactions():
    from orthodiff.evaluation.acquisition import acquisition_effects, design_matrix

    rng = np.random.default_rng(1)
    n = 90
    catalog = pd.DataFrame({"series_id": [f"s{i}" for i in range(n)], "center": [f"c{i % 6}" for i in range(n)],
                            "echo_time": rng.uniform(10, 50, n), "flip_angle": rng.choice([70.0, 90.0, 120.0], n)})
    observed = catalog.copy()
    catalog.loc[::9, "echo_time"] = np.nan
    design, dropped, ks = design_matrix(catalog)
    assert design["flip_angle"].min() == 0 and design["flip_angle"].max() == 1  # MinMax
    assert abs(design["echo_time"].mean()) < 1e-9 and design["echo_time"].std(ddof=0) == pytest.approx(1)
    assert ks.loc[0, "parameter"] == "echo_time" and ks.loc[0, "imputed"] == 10 and 0 <= ks.loc[0, "p"] <= 1
    te = observed["echo_time"]
    rows = []
    for model, slope in (("a", 0.0), ("b", -0.006)):  # model b loses Dice with TE, model a does not
        rows.append(pd.DataFrame({"model": model, "series_id": catalog["series_id"],
                                  "dice": 0.8 + slope * (te - 30) + rng.normal(0, 0.005, n)}))
    covariates = pd.DataFrame({"encoder_finetuned": [0.0, 1.0], "box_shift": [0.0, 0.0]}, index=["a", "b"])
    table, fit = acquisition_effects(pd.concat(rows), catalog.fillna({"echo_time": 30.0}), "center",
                                     model_covariates=covariates)
    effects = table.set_index("effect")
    assert effects.loc["echo_time:model_b", "ci_high"] < 0 < effects.loc["echo_time", "ci_high"]
    assert fit["interactions"] and "box_shift" not in effects.index and "encoder_finetuned" not in effects.index
    assert len(fit["covariates_left_out"]) == 2  # constant, or one per model: the model effect holds it already
    without, _ = acquisition_effects(pd.concat(rows), catalog.fillna({"echo_time": 30.0}), "center", interactions=False)
    assert not without["effect"].str.contains(":").any()


def test_all_empty_predictions_and_a_single_subject_are_reported_not_raised(tmp_path):
    import nibabel as nib

    from orthodiff.catalogs.cohort import read_catalog, resolve_path, write_catalog
    from orthodiff.catalogs.synth import synthesize
    from orthodiff.evaluation.run import run_evaluate_seg

    catalog_path = synthesize("thigh", 2, 32, 0, tmp_path / "cohort", progress=False, workers=1)
    catalog = read_catalog(catalog_path)
    empty, copy = tmp_path / "empty", tmp_path / "copy"
    for folder in (empty, copy):
        folder.mkdir()
    for row in catalog.itertuples():
        image = nib.load(resolve_path(catalog_path, row.mask_path))
        nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8), image.affine), empty / f"{row.series_id}.nii.gz")
        nib.save(image, copy / f"{row.series_id}.nii.gz")
    tables = run_evaluate_seg([empty, copy], catalog_path, tmp_path / "e", split=None, n_boot=50, min_pixels=0, min_voxels=0)
    tier = tables["tier_dataset"].set_index("model")
    assert tier.loc["empty", "dice"] == 0.0 and np.isnan(tier.loc["empty", "hd95"]) and tier.loc["copy", "dice"] == 1.0
    assert (tables["case_counts"].query("model == 'empty'")["missed_series"] == 2).all()
    assert tables["notes"]["note"].str.contains("no QUAD voxels").sum() == 0  # volumes only: 0 mm^3, not undefined
    assert tables["agreement"]["reason"].str.contains("agreement needs at least 4").all()
    write_catalog(catalog.iloc[:1], tmp_path / "cohort" / "one.parquet")  # paths resolve beside the catalog
    one = run_evaluate_seg([copy], tmp_path / "cohort" / "one.parquet", tmp_path / "e1", split=None, n_boot=50, min_pixels=0,
                           min_voxels=0)
    assert one["tier_dataset"]["subjects"].tolist() == [1] and one["friedman"].empty
    assert (tmp_path / "e1" / "evaluation.html").is_file()


def test_segment_train_scores_a_false_positive_as_evaluate_seg_does():
    """`segment train`'s test Dice (`supervised.runs.series_dice`) is `evaluation.metrics`'s:
    a structure only in the prediction scores 0 (MONAI's `ignore_empty=True`, used before,
    left it out), one in neither mask is undefined."""
    from orthodiff.evaluation.metrics import series_metrics
    from orthodiff.supervised.runs import dice_table, series_dice

    knee = structures("knee")
    true = np.zeros((2, 4, 8, 8), np.uint8)
    true[:, 1:3, 2:6, 2:6] = 1  # femur in both series
    pred = true.copy()
    pred[0, 1, 0, 0] = 4  # a femoral-cartilage voxel the first reference lacks
    pred[1, 1:3, 2:6, 2:4] = 0  # half the femur missed in the second series
    scores = series_dice(pred, true, knee)
    assert scores[0, 3] == 0.0 and np.isnan(scores[1, 3]) and np.isnan(scores[:, 4:]).all()
    for i in range(2):  # the same numbers as `evaluate seg`'s per-series metrics (MONAI, ignore_empty=False)
        expected = series_metrics(pred[i], true[i], (1.0, 1.0, 1.0), knee)["dice"].to_numpy()
        np.testing.assert_allclose(scores[i], expected, equal_nan=True)
    table = dice_table(pred, true, knee).set_index("structure")
    assert table.loc["FC", "dice"] == 0.0 and table.loc["FC", "series"] == 1 and table.loc["Femur", "series"] == 2
    assert table.loc["Femur", "dice"] == pytest.approx((1.0 + 2 / 3) / 2)
